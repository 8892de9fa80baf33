"""The job spec: one YAML file that says what to generate, with what, where and on what resources.

`load_spec` parses it with yaml.safe_load, applies `--set` overrides, builds typed dataclasses and
checks what the dataclasses cannot check alone (references to files, decoders and protocols). Every
error names the file, the line where it has one, the field, and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import fsspec
import yaml

from decoders import references
from jobs.nightly import RunDate, fill_dates
from jobs.schema import LOADER_SET, build, parse_yaml
from jobs.train_spec import TrainDecoderSpec
from pipelines.config import (
    LATENT_FACTOR,
    MODEL_VAE,
    MODEL_VIDEO_VAE,
    ConditioningInput,
    CostConfig,
    EncodeStages,
    ImageConfig,
    InputConfig,
    ModelConfig,
    NotifyConfig,
    OutputConfig,
    PromptsConfig,
    QualityMonitorConfig,
    RedecodeStages,
    SamplerConfig,
    StagesConfig,
    VideoConfig,
    VideoModelConfig,
    VideoOutputConfig,
    VideoStages,
    require,
)
from pipelines.errors import ConfigError
from pipelines.models.loading import TINY_REFERENCE
from pipelines.models.random_models import RANDOM_MODELS
from pipelines.plan import MAX_SEED, check_seeds


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
    # "sdxl-vae" (the model's own VAE), a registered decoder (published weights), a random build
    # ("random:taesd"), a checkpoint path or a Hugging Face id.
    decoder: str = MODEL_VAE
    # Decode in overlapping tiles (true, or a tile size in pixels) for sizes beyond memory; for
    # decoders that support it (sdxl-vae, taesd, tae-192).
    decoder_tiling: Union[bool, int] = False
    # Off by default: PSNR/SSIM of the decoder against the model's VAE on a fraction of the samples.
    quality_monitor: QualityMonitorConfig | None = None
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
        require(0 <= self.seed <= MAX_SEED, "seed", f"an integer from 0 to {MAX_SEED} (2^63 - 1)", self.seed)
        if self.num_images is not None or self.prompts.inline is not None:  # else known once the prompt file is read
            check_seeds(self.seed, self.num_images or len(self.prompts.inline) * self.prompts.images_per_prompt)
        _check_tiling(self.decoder_tiling)
        _check_monitor(self)

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
        return {
            "kind": self.kind,
            "model": model_identity(self.model),
            "sampler": spec["sampler"],
            "seed": self.seed,
            "decoder": self.decoder,
            "decoder_tiling": self.decoder_tiling,
            "output": _output_identity(self),
            **_monitor_identity(self),
        }


# How fast, not what: left out of the identity, so an output resumes with them switched on or off.
SPEED_ONLY_MODEL_FIELDS = ("channels_last", "compile")


def model_identity(model) -> dict:
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in SPEED_ONLY_MODEL_FIELDS}


def _monitor_identity(spec) -> dict:
    """The monitor's settings, when on: its fraction writes fields, its thresholds decide flags. Absent
    when off, so outputs made before the monitor existed resume as before."""
    if spec.quality_monitor is None:
        return {}
    return {"quality_monitor": dataclasses.asdict(spec.quality_monitor)}


def _check_monitor(spec) -> None:
    if spec.quality_monitor is not None and spec.decoder == MODEL_VAE:
        raise ConfigError("quality_monitor", "", detail=(
            f"the monitor compares the decoder with the reference, {MODEL_VAE}, which is this job's decoder: "
            "nothing to compare; remove quality_monitor or choose a lighter decoder"))


def _output_identity(spec) -> dict:
    output = dataclasses.asdict(spec.output)
    return {k: output[k] for k in ("image_format", "quality", "samples_per_shard", "save_latents")}


def _check_tiling(tiling) -> None:
    if not isinstance(tiling, bool):
        require(
            tiling > 0 and tiling % LATENT_FACTOR == 0,
            "decoder_tiling",
            f"true, false or a tile size in pixels (a positive multiple of {LATENT_FACTOR})",
            tiling,
        )


@dataclass(frozen=True)
class EncodeSpec:
    """Latent precompute: images -> the model's frozen VAE encoder -> latents, images and captions."""

    name: str
    input: InputConfig
    output: OutputConfig
    kind: Literal["encode"] = "encode"
    # The model whose VAE encodes ("tiny", a Hugging Face id or a from_pretrained directory).
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    # Latents are stored as the diffusion model sees them (VAE mean x scaling factor).
    latent_dtype: Literal["float16", "float32"] = "float32"
    stages: EncodeStages = field(default_factory=EncodeStages)
    cost: CostConfig | None = None

    def __post_init__(self):
        require(bool(self.name.strip()), "name", "a non-empty name", self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        spec = self.to_dict()
        return {"kind": self.kind, "model": model_identity(self.model), "image": spec["image"], "latent_dtype": self.latent_dtype,
                "input": self.input.url, "output": _output_identity(self)}


@dataclass(frozen=True)
class RedecodeSpec:
    """Decode the latents a latentmill output kept with another decoder, keeping keys and metadata."""

    name: str
    input: InputConfig
    output: OutputConfig
    kind: Literal["redecode"] = "redecode"
    # The model whose VAE `decoder: sdxl-vae` means.
    model: ModelConfig = field(default_factory=ModelConfig)
    decoder: str = "sdxl-vae"
    decoder_tiling: Union[bool, int] = False
    quality_monitor: QualityMonitorConfig | None = None
    stages: RedecodeStages = field(default_factory=RedecodeStages)
    cost: CostConfig | None = None

    def __post_init__(self):
        require(bool(self.name.strip()), "name", "a non-empty name", self.name)
        _check_tiling(self.decoder_tiling)
        _check_monitor(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": model_identity(self.model), "decoder": self.decoder,
                "decoder_tiling": self.decoder_tiling, "input": self.input.url, "output": _output_identity(self),
                **_monitor_identity(self)}


@dataclass(frozen=True)
class VideoSpec:
    """Image-to-video with Stable Video Diffusion: one clip per conditioning image, as mp4 shards."""

    name: str
    input: ConditioningInput
    output: VideoOutputConfig
    kind: Literal["generate-video"] = "generate-video"
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    # Clip i gets seed `seed + i` (its noise and the conditioning image's noise augmentation).
    seed: int = 0
    # "svd-vae" (the model's own temporal VAE), a video decoder (random:tae-temporal, ...) or a
    # checkpoint path of one.
    decoder: str = MODEL_VIDEO_VAE
    stages: VideoStages = field(default_factory=VideoStages)
    cost: CostConfig | None = None

    def __post_init__(self):
        require(bool(self.name.strip()), "name", "a non-empty name", self.name)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        output = dataclasses.asdict(self.output)
        return {"kind": self.kind, "model": model_identity(self.model), "video": dataclasses.asdict(self.video),
                "seed": self.seed, "decoder": self.decoder,
                "input": {"url": self.input.url, "builtin": self.input.builtin},
                "output": {k: output[k] for k in ("crf", "preset", "poster", "samples_per_shard", "save_latents")}}


SPEC_CLASSES = {"generate": JobSpec, "encode": EncodeSpec, "redecode": RedecodeSpec, "generate-video": VideoSpec,
                "train-decoder": TrainDecoderSpec}
AnySpec = Union[JobSpec, EncodeSpec, RedecodeSpec, VideoSpec, TrainDecoderSpec]


def load_spec(path: str, overrides: list[str] = (), date: str | None = None) -> AnySpec:
    """Load, override, fill {date} (`date`, default today UTC) and validate a spec file."""
    return parse_spec(read_spec_text(path), source=path, overrides=overrides, date=date)


def read_spec_text(path: str) -> str:
    try:
        with fsspec.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError("", "", detail=f"{path}: spec file not found") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", "", detail=f"{path}: not valid UTF-8 at byte {exc.start}") from None


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


def parse_spec(text: str, source: str = "<spec>", overrides: list[str] = (), date: str | None = None) -> AnySpec:
    data, lines = spec_data(text, source, overrides)
    try:
        kind = data.get("kind", "generate")
        if kind not in SPEC_CLASSES:
            raise ConfigError("kind", "one of " + ", ".join(repr(k) for k in SPEC_CLASSES), kind)
        run_date = fill_dates(data, date)
        spec = build(SPEC_CLASSES[kind], data)
        if hasattr(spec, "run_date"):  # nightly builds: generate jobs
            spec = dataclasses.replace(spec, run_date=run_date)
        check_references(spec)
    except ConfigError as exc:
        line = _line_of(exc.path, lines)
        where = f"{source}:{line}" if line else source
        raise ConfigError("", "", detail=f"{where}: {exc}") from None
    return spec


# Fields that may name a local file or folder. A relative one means "from where latentmill runs",
# but only the driver runs there: Ray Train workers run in a directory of their own, and actors of
# a cluster started elsewhere in theirs. So the driver makes them absolute before the job starts.
PATH_FIELDS = ("url", "urls", "file", "reference", "decoder", "init_weights")
NAMED_FIELDS = ("reference", "decoder")  # also take built-in names and Hugging Face ids


def with_absolute_paths(spec):
    """`spec` (or a section of it) with every local relative path absolute, from the current directory."""
    changes = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value):
            section = with_absolute_paths(value)
            if section is not value:
                changes[f.name] = section
        elif f.name in PATH_FIELDS and value is not None:
            absolute = [_absolute(v, f.name) for v in value] if isinstance(value, list) else _absolute(value, f.name)
            if absolute != value:
                changes[f.name] = absolute
    return dataclasses.replace(spec, **changes) if changes else spec


def _absolute(value: str, name: str) -> str:
    if references.is_url(value) or (name in NAMED_FIELDS and not references.is_path(value)):
        return value  # a URL, a built-in name or a Hugging Face id
    return os.path.abspath(references.local_path(value))


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


def check_references(spec: AnySpec) -> None:
    """Checks that need the outside world: files, protocols and registered decoders."""
    run_date = getattr(spec, "run_date", None)
    if getattr(spec.output, "retention", None) is not None and (run_date is None or run_date.output_template is None):
        raise ConfigError("output.retention", "", detail="needs {date} in output.url (retention applies to dated outputs)")
    _check_protocol(spec.output.url, "output.url")
    if getattr(spec, "prompts", None) is not None and spec.prompts.file is not None:
        _check_protocol(spec.prompts.file, "prompts.file")
    if getattr(spec, "input", None) is not None and spec.input.url is not None:
        _check_protocol(spec.input.url, "input.url")
    for i, url in enumerate(spec.data.urls if spec.kind == "train-decoder" else ()):
        _check_protocol(url, f"data.urls[{i}]")
    reference = spec.model.reference
    kind = references.kind_of(reference, builtins=(TINY_REFERENCE, *RANDOM_MODELS))
    if kind == "builtin" and reference in RANDOM_MODELS:
        _check_random_family(reference, spec.model.family)
    if kind == "path":
        _check_model_dir(reference)
    elif kind is None:
        raise ConfigError(
            "model.reference",
            "",
            detail=f"{reference!r} is neither 'tiny', {' or '.join(RANDOM_MODELS)} (random weights), a Hugging Face "
            "id (org/name) nor an existing directory",
        )
    if hasattr(spec, "decoder"):
        _check_decoder(spec.decoder, spec.model.family, video=isinstance(spec, VideoSpec))
    if isinstance(spec, VideoSpec):
        _check_decode_chunks(spec)
    if getattr(spec, "decoder_tiling", False):
        _check_tiling_support(spec.decoder)


def _check_random_family(reference: str, family: str) -> None:
    """random:sdxl makes images and random:svd-xt clips: each only in its own kind of job."""
    if RANDOM_MODELS[reference].family != family:
        fitting = [name for name, m in RANDOM_MODELS.items() if m.family == family]
        raise ConfigError("model.reference", "", detail=(
            f"{reference!r} is a {RANDOM_MODELS[reference].family!r} model; this job needs a {family!r} model "
            f"({', '.join(fitting)} for random weights)"))


def _check_tiling_support(decoder: str) -> None:
    """Tiling is a spec error, not an actor crash, for a registered decoder that cannot tile."""
    import decoders

    entry = None if decoder == MODEL_VAE else decoders.lookup(decoder)
    if entry is not None and not entry.supports_tiling:
        tiling = ", ".join(n for n in decoders.available() if n != MODEL_VAE and decoders.lookup(n).supports_tiling)
        raise ConfigError("decoder_tiling", "", detail=(
            f"decoder {decoder!r} cannot decode in tiles; set decoder_tiling: false or use one that can: "
            f"sdxl-vae (the model's VAE), {tiling}"))


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


def _check_decoder(decoder: str, model_family: str, video: bool = False) -> None:
    """Before any actor starts: the decoder exists, decodes this job's kind of latents (images or
    clips) and the model's latent space, and its weights are here."""
    import decoders
    from decoders.registry import unknown_name_help

    if decoder == (MODEL_VIDEO_VAE if video else MODEL_VAE):
        return
    kind = references.kind_of(decoder, builtins=decoders.available())
    entry = decoders.lookup(decoder) if kind == "builtin" else None
    if entry is not None and entry.is_video != video:
        found, wanted = ("an image", "a video") if video else ("a video", "an image")
        own = MODEL_VIDEO_VAE if video else MODEL_VAE
        fitting = ", ".join(n for n in decoders.available() if decoders.lookup(n).is_video == video)
        raise ConfigError("decoder", "", detail=(
            f"{decoder!r} is {found} decoder; {wanted} job needs {wanted} decoder: {own} (the model's own VAE), "
            f"one of {fitting}, or a checkpoint of one"))
    try:
        if kind in ("builtin", "hub"):
            decoders.check_latent_space(decoder, model_family)
            decoders.fetch_weights(decoder)
    except (decoders.LatentSpaceMismatch, decoders.WeightsUnavailable) as exc:
        raise ConfigError("decoder", "", detail=str(exc)) from None
    if kind == "path":
        fs, root = fsspec.core.url_to_fs(references.local_path(decoder))
        if not fs.exists(root):
            raise ConfigError("decoder", "", detail=f"decoder checkpoint {decoder!r} does not exist")
    elif kind is None:
        detail = f"unknown decoder {decoder!r}: {unknown_name_help(decoder)}; or 'sdxl-vae', the model's own VAE"
        raise ConfigError("decoder", "", detail=detail)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _check_decode_chunks(spec: VideoSpec) -> None:
    """Chunks shorter than the clip only for decoders that decode chunks exactly."""
    import decoders

    chunk, frames = spec.video.decode_chunk_size, spec.video.frames
    if chunk is None or chunk >= frames:
        return
    entry = None if spec.decoder == MODEL_VIDEO_VAE else decoders.lookup(spec.decoder)
    if spec.decoder == MODEL_VIDEO_VAE or (entry is not None and not entry.supports_chunking):
        raise ConfigError("video.decode_chunk_size", "", detail=(
            f"decoder {spec.decoder!r} cannot decode a clip in chunks of frames with the frames of a whole-clip "
            f"decode (its temporal layers see every frame); set it to null or >= video.frames ({frames}), or use "
            f"a decoder that chunks exactly (random:tae-temporal or a checkpoint of it)"))


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    # Error paths may end in list indices ("prompts.inline[2]"); the mapping key holds the line.
    path = re.sub(r"\[\d+\]", "", path)
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return None
