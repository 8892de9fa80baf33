"""Published trained weights on the Hugging Face hub: find them in the cache or download them.

Everything goes through `huggingface_hub.hf_hub_download`, so the hub's own rules apply: its cache
(`HF_HOME` / `HF_HUB_CACHE`), offline mode (`HF_HUB_OFFLINE=1`), tokens and mirrors
(`HF_ENDPOINT`). When the files cannot be had, the error says which repository and files are
needed and how to provide them, instead of the hub's generic connection message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


class WeightsUnavailable(FileNotFoundError):
    """A registered decoder's published weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class HubWeights:
    repo_id: str
    subfolder: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """Paths inside the repository (what `hf download` takes)."""
        prefix = f"{self.subfolder}/" if self.subfolder else ""
        return (prefix + CONFIG_FILE, prefix + WEIGHTS_FILE)

    def __str__(self) -> str:
        return self.repo_id + (f" (subfolder {self.subfolder})" if self.subfolder else "")


def fetch(weights: HubWeights, name: str, random_name: str | None = None) -> str:
    """The local directory holding config.json and the safetensors weights of `weights`.

    Downloads into the hub cache when they are not there and the hub is reachable.
    """
    # lazy: keeps huggingface_hub out of processes that never call this
    from huggingface_hub import constants, hf_hub_download

    paths = []
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            paths.append(hf_hub_download(weights.repo_id, filename, subfolder=weights.subfolder))
        except Exception as exc:  # offline, not cached, unreachable, gated, ...: all mean "not here"
            raise WeightsUnavailable(_how_to_provide(weights, name, random_name, exc, constants)) from None
    return os.path.dirname(paths[-1])


def _how_to_provide(weights: HubWeights, name: str, random_name: str | None, exc: Exception, constants) -> str:
    files = " ".join(weights.files)
    why = "offline mode is on (HF_HUB_OFFLINE)" if constants.is_offline_mode() else "the hub could not be reached"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"decoder {name!r} needs the trained weights of the Hugging Face repository {weights.repo_id}: "
        f"{files}. They are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why} "
        f"[{type(exc).__name__}: {first_line}]. To provide them, either run "
        f"`hf download {weights.repo_id} {files}` (huggingface-cli download with older huggingface_hub) "
        f"where the hub is reachable (gated repositories need `hf auth login` first), with HF_HOME or "
        f"HF_HUB_CACHE pointing at the cache this job reads; "
        f"or download those files into a directory and give that directory as the decoder."
        + (f" For random weights (noise: tests and benchmarks only) use {random_name!r}." if random_name else "")
    )
