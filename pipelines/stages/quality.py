"""Quality monitor stage: the monitored samples decoded again with the reference decoder (the
model's own VAE), and PSNR/SSIM of the job's decoder against it added to their manifest fields.

The decode stage picks the samples (`is_monitored`: a hash of the key, so a resumed job monitors
the same ones and writes the same shards) and hands this stage their latents and its uint8 pixels.
A stage of its own, after decode, so its cost shows in the per-stage accounting like any other's.
"""

from __future__ import annotations

import torch

from decoders.metrics import score
from pipelines.config import MODEL_VAE
from pipelines.models.decoding import load_decoder
from pipelines.stages.device import pick_device

# Unmonitored samples get the columns too (null), so every manifest of the job has them.
UNMONITORED = {"monitor_psnr": None, "monitor_ssim": None}


class QualityMonitor:
    def __init__(
        self,
        model_reference: str,
        dtype: str = "float32",
        tiling: bool | int = False,
        batch_size: int | None = None,
        device: str | None = None,
    ):
        self.batch_size = batch_size
        self.device = device or pick_device()
        self.reference = load_decoder(MODEL_VAE, model_reference, self.device, dtype)
        self.reference.tiling = tiling  # a job that tiles for memory needs it for the reference too

    def __call__(self, decoded: dict) -> dict:
        scores = self.score(decoded.get("monitor"))
        fields = [{**f, **scores.get(key, UNMONITORED)} for key, f in zip(decoded["keys"], decoded["fields"])]
        return {"keys": decoded["keys"], "files": decoded["files"], "fields": fields}

    def score(self, monitor: dict | None) -> dict[str, dict]:
        """key -> its monitor fields, for the samples the decode stage passed on."""
        if not monitor or not monitor["keys"]:
            return {}
        latents = torch.tensor(monitor["latents"], device=self.device)
        chunk = self.batch_size or len(latents)
        reference = torch.cat([self.reference.decode(part) for part in latents.split(chunk)])
        light = torch.tensor(monitor["pixels"]).to(reference.device).permute(0, 3, 1, 2) / 255
        metrics = score(reference, light)  # both rounded to uint8 levels, as the dataset's images are
        return {key: {"monitor_psnr": psnr, "monitor_ssim": ssim}
                for key, psnr, ssim in zip(monitor["keys"], metrics["psnr"], metrics["ssim"])}
