"""The job spec: one YAML file that says what to generate, with what, where and on what resources.

`load_spec` parses it with yaml.safe_load, applies `--set` overrides, builds typed dataclasses and
checks what the dataclasses cannot check alone (references to files, decoders and protocols). Every
error names the file, the line where it has one, the field, and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import fsspec
import yaml

from jobs.nightly import RunDate, fill_dates
from jobs.schema import LOADER_SET, build, parse_yaml
from pipelines.config import (
    LATENT_FACTOR,
    CostConfig,
    ModelConfig,
    NotifyConfig,
    OutputConfig,
    PromptsConfig,
    SamplerConfig,
    StagesConfig,
    require,
)
from pipelines.errors import ConfigError
from pipelines.models.loading import TINY_REFERENCE, is_path_reference

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class JobSpec:
    name: str
    prompts: PromptsConfig
    output: OutputConfig
    kind: Literal["generate"] = "generate"
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # Default: every prompt `images_per_prompt` times. Larger values cycle through the prompts.
    num_images: int | None = None
    # Sample i gets seed `seed + i`, so any sample can be regenerated alone with plain diffusers.
    seed: int = 0
    # "sdxl-vae" (the model's own VAE), a registered lightweight decoder, or a checkpoint path.
    decoder: str = "sdxl-vae"
    # Decode in overlapping tiles (true, or a tile size in pixels) for sizes beyond memory; for
    # decoders that support it (sdxl-vae, taesd, tae-192).
    decoder_tiling: Union[bool, int] = False
    stages: StagesConfig = field(default_factory=StagesConfig)
    # Prices per GPU-hour and CPU-hour for the report's cost figures; none given: no cost shown.
    cost: CostConfig | None = None
    # Where to POST a JSON summary of each run (success or failure).
    notify: NotifyConfig | None = None
    # The run's date and the {date} template of output.url: set by the loader (--date), not in YAML.
    run_date: RunDate | None = field(default=None, metadata=LOADER_SET)

    def __post_init__(self):
        require(bool(self.name.strip()), "name", "a non-empty name", self.name)
        if self.num_images is not None:
            require(self.num_images > 0, "num_images", "a positive integer", self.num_images)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        if not isinstance(self.decoder_tiling, bool):
            require(
                self.decoder_tiling > 0 and self.decoder_tiling % LATENT_FACTOR == 0,
                "decoder_tiling",
                f"true, false or a tile size in pixels (a positive multiple of {LATENT_FACTOR})",
                self.decoder_tiling,
            )

    def to_dict(self) -> dict[str, Any]:
        """The spec as saved with the output, parseable again: output.url as written ({date}
        templates kept, the loader-set run_date left out), a webhook URL (often holding a token)
        reduced to its host."""
        spec = {k: v for k, v in dataclasses.asdict(self).items() if k != "run_date"}
        if self.run_date is not None and self.run_date.output_template is not None:
            spec["output"]["url"] = self.run_date.output_template
        if spec["notify"] and spec["notify"]["webhook"]:
            spec["notify"]["webhook"] = _origin(spec["notify"]["webhook"]) + "/..."
        return spec

    def identity(self) -> dict[str, Any]:
        """What decides the samples' content. Two runs with equal identities write equal outputs;
        resources and batch sizes are left out, since they only change how fast."""
        spec = self.to_dict()
        output = spec["output"]
        return {
            "kind": self.kind,
            "model": spec["model"],
            "sampler": spec["sampler"],
            "seed": self.seed,
            "decoder": self.decoder,
            "decoder_tiling": self.decoder_tiling,
            "output": {k: output[k] for k in ("image_format", "quality", "samples_per_shard", "save_latents")},
        }


def load_spec(path: str, overrides: list[str] = (), date: str | None = None) -> JobSpec:
    """Load, override, fill {date} (`date`, default today UTC) and validate a spec file."""
    return parse_spec(read_spec_text(path), source=path, overrides=overrides, date=date)


def read_spec_text(path: str) -> str:
    try:
        with fsspec.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError("", "", detail=f"{path}: spec file not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", "", detail=f"{path}: not valid UTF-8 at byte {exc.start}") from None
    return text


def spec_data(text: str, source: str = "<spec>", overrides: list[str] = ()) -> tuple[dict, dict[str, int]]:
    """The parsed spec mapping with `--set` overrides applied, and the line of every field."""
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "", detail=f"{source}: expected a mapping of fields at the top, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return data, lines


def parse_spec(text: str, source: str = "<spec>", overrides: list[str] = (), date: str | None = None) -> JobSpec:
    data, lines = spec_data(text, source, overrides)
    try:
        run_date = fill_dates(data, date)
        spec = dataclasses.replace(build(JobSpec, data), run_date=run_date)
        check_references(spec)
    except ConfigError as exc:
        line = _line_of(exc.path, lines)
        where = f"{source}:{line}" if line else source
        raise ConfigError("", "", detail=f"{where}: {exc}") from None
    return spec


def apply_override(data: dict, item: str) -> None:
    """`a.b=value`: the value is YAML, so numbers, booleans and lists keep their types."""
    if "=" not in item:
        raise ConfigError("", "", detail=f"--set {item!r}: expected FIELD=VALUE, e.g. sampler.steps=20")
    dotted, _, value_text = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError("", "", detail=f"--set {item!r}: {dotted!r} is not a dotted field path")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: i + 1]), "", detail=f"--set {item!r}: this field is not a mapping")
        node = child
    node[keys[-1]] = value


def check_references(spec: JobSpec) -> None:
    """Checks that need the outside world: files, protocols and registered decoders."""
    if spec.output.retention is not None and (spec.run_date is None or spec.run_date.output_template is None):
        raise ConfigError("output.retention", "", detail="needs {date} in output.url (retention applies to dated outputs)")
    _check_protocol(spec.output.url, "output.url")
    if spec.prompts.file is not None:
        _check_protocol(spec.prompts.file, "prompts.file")
    reference = spec.model.reference
    if reference != TINY_REFERENCE:
        if is_path_reference(reference):
            _check_model_dir(reference)
        elif not HF_ID.match(reference):
            raise ConfigError(
                "model.reference",
                "",
                detail=f"{reference!r} is neither 'tiny', a Hugging Face id (org/name) nor an existing directory",
            )
    _check_decoder(spec.decoder)


def _check_protocol(url: str, path: str) -> None:
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol is None:
        return
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        known = ", ".join(sorted(p for p in fsspec.available_protocols() if len(p) > 1)[:20])
        raise ConfigError(path, "", detail=f"unknown protocol {protocol!r} in {url!r} ({exc}); known include: {known}") from None


def _check_model_dir(reference: str) -> None:
    fs, root = fsspec.core.url_to_fs(reference)
    if not fs.isdir(root):
        raise ConfigError("model.reference", "", detail=f"model directory {reference!r} does not exist")
    if not fs.exists(f"{root.rstrip('/')}/model_index.json"):
        raise ConfigError(
            "model.reference",
            "",
            detail=f"{reference!r} has no model_index.json: expected a diffusers save_pretrained directory",
        )


def _check_decoder(decoder: str) -> None:
    import decoders

    if decoder in decoders.available():
        return
    if is_path_reference(decoder):
        fs, root = fsspec.core.url_to_fs(decoder)
        if fs.exists(root):
            return
        raise ConfigError("decoder", "", detail=f"decoder checkpoint {decoder!r} does not exist")
    raise ConfigError(
        "decoder",
        "",
        detail=f"unknown decoder {decoder!r}: expected one of {', '.join(decoders.available())} or a checkpoint path",
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    # Error paths may end in list indices ("prompts.inline[2]"); the mapping key holds the line.
    path = re.sub(r"\[\d+\]", "", path)
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return None
