"""Typed configuration of a generation pipeline. Each dataclass checks its own values.

A kind's spec class (jobs/kinds/) is built from these, so the pipeline never sees an unchecked value;
the sections of one kind only (its stages section, say) live in its own file there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Union

from pipelines.errors import ConfigError
from pipelines.sources.pixel_rules import DEFAULT_MAX_PIXELS, parse_colour

LATENT_FACTOR = 8  # pixels per latent cell in SDXL-class VAEs
# `decoder: sdxl-vae` in a job spec is the model's own VAE (the tiny model's tiny one); other
# registered decoder names mean published weights (decoders/registry.py).
MODEL_VAE = "sdxl-vae"
# A write task holds its whole shard in memory (about 1.5 MB per 1024x1024 PNG).
MAX_SAMPLES_PER_SHARD = 10_000


def require(ok: bool, path: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(path, expected, got)


def require_finite(value: float, path: str, expected: str) -> None:
    """`value` >= 0 and finite (YAML's .inf and .nan parse as floats)."""
    require(value >= 0 and math.isfinite(value), path, expected, value)


def require_exactly_one(section: str, **fields) -> None:
    """Exactly one of the alternative fields is given (not None)."""
    if sum(value is not None for value in fields.values()) != 1:
        raise ConfigError("", "", detail="give exactly one of " + " or ".join(f"{section}.{name}" for name in fields))


@dataclass(frozen=True)
class ModelConfig:
    family: Literal["sdxl"] = "sdxl"
    # "tiny" (built in), a Hugging Face id, or a local/fsspec directory in from_pretrained layout.
    reference: str = "tiny"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Convolutions in NHWC (the UNet and the decoder): faster with tensor cores on GPUs.
    channels_last: bool = False
    # torch.compile the UNet and the decoder; each actor compiles once while loading (reported apart
    # from its throughput as compile_s).
    compile: bool = False

    def __post_init__(self):
        require(bool(self.reference.strip()), "reference", "a model reference", self.reference)


@dataclass(frozen=True)
class SamplerConfig:
    # "default" keeps the scheduler saved with the model.
    scheduler: Literal["default", "euler", "euler_ancestral", "ddim", "dpmpp_2m", "unipc"] = "default"
    steps: int = 30
    guidance_scale: float = 5.0
    height: int = 1024
    width: int = 1024
    negative_prompt: str = ""

    def __post_init__(self):
        require(self.steps > 0, "steps", "a positive integer", self.steps)
        require_finite(self.guidance_scale, "guidance_scale", "a finite number >= 0")
        for name in ("height", "width"):
            value = getattr(self, name)
            require(
                value > 0 and value % LATENT_FACTOR == 0,
                name,
                f"a positive multiple of {LATENT_FACTOR} (the VAE's latent factor)",
                value,
            )


@dataclass(frozen=True)
class PromptsConfig:
    inline: list[str] | None = None
    # A .txt (one prompt a line), .jsonl ({"prompt": ...} a line) or .parquet (column "prompt")
    # file at any fsspec URL.
    file: str | None = None
    images_per_prompt: int = 1

    def __post_init__(self):
        require_exactly_one("prompts", inline=self.inline, file=self.file)
        if self.inline is not None:
            require(len(self.inline) > 0, "inline", "a non-empty list of prompts", self.inline)
            for i, prompt in enumerate(self.inline):
                require(bool(prompt.strip()), f"inline[{i}]", "a non-empty prompt", prompt)
        require(self.images_per_prompt > 0, "images_per_prompt", "a positive integer", self.images_per_prompt)


@dataclass(frozen=True)
class StorageConfig:
    """How to reach object storage. Secrets are never written here, only the names of the
    environment variables that hold them; unset fields fall back to the standard AWS chain
    (AWS_* variables, ~/.aws profiles, instance roles)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    # Keep retrying unreachable storage (with backoff) this long before failing the job.
    timeout_s: float = 120.0

    def __post_init__(self):
        require(self.timeout_s > 0 and math.isfinite(self.timeout_s), "timeout_s", "a positive number of seconds", self.timeout_s)
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ConfigError("", "", detail="give both access_key_id_env and secret_access_key_env, or neither")


@dataclass(frozen=True)
class RetentionConfig:
    """Dated outputs (`{date}` in output.url) to keep: the newest `keep`, this run's included.
    Only complete latentmill outputs of the same job are ever deleted."""

    keep: int

    def __post_init__(self):
        require(self.keep >= 1, "keep", "an integer >= 1 (dated outputs to keep, this run's included)", self.keep)


@dataclass(frozen=True)
class NotifyConfig:
    """Where to POST the run's JSON summary, on success and on failure. A webhook URL often holds
    a token: `webhook_env` names the environment variable holding it, so it is never saved."""

    webhook: str | None = None
    webhook_env: str | None = None
    timeout_s: float = 10.0

    def __post_init__(self):
        require_exactly_one("notify", webhook=self.webhook, webhook_env=self.webhook_env)
        if self.webhook is not None:
            require(self.webhook.startswith(("http://", "https://")), "webhook", "an http:// or https:// URL", self.webhook)
        require(0 < self.timeout_s <= 120, "timeout_s", "seconds, more than 0 and at most 120", self.timeout_s)


def check_output_fields(output) -> None:
    """The fields every output section has (image and video): url, samples_per_shard, lease_ttl_s."""
    require(bool(output.url.strip()), "url", "an output URL or path", output.url)
    require(
        0 < output.samples_per_shard <= MAX_SAMPLES_PER_SHARD,
        "samples_per_shard",
        f"a positive integer up to {MAX_SAMPLES_PER_SHARD:,} (a write task holds its whole shard in memory)",
        output.samples_per_shard,
    )
    require(output.lease_ttl_s >= 1 and math.isfinite(output.lease_ttl_s), "lease_ttl_s", "a number of seconds >= 1",
            output.lease_ttl_s)


@dataclass(frozen=True)
class OutputConfig:
    url: str
    image_format: Literal["png", "jpg", "webp"] = "png"
    quality: int = 95  # jpg and webp only
    samples_per_shard: int = 256
    save_latents: bool = False
    # What to do when the URL already holds a job: "resume" it if it is this job (else refuse),
    # "overwrite" it, or "extend" it when this spec plans the same samples and more.
    mode: Literal["resume", "overwrite", "extend"] = "resume"
    storage: StorageConfig = field(default_factory=StorageConfig)
    # One driver writes an output at a time: it renews its lease every lease_ttl_s / 4, and a
    # driver killed without releasing it is taken over this long after its last renewal.
    lease_ttl_s: float = 60.0
    # With `{date}` in url: delete older dated outputs of this job beyond the newest `keep`.
    retention: RetentionConfig | None = None

    def __post_init__(self):
        check_output_fields(self)
        require(1 <= self.quality <= 100, "quality", "an integer from 1 to 100", self.quality)


@dataclass(frozen=True)
class Concurrency:
    min: int = 1
    max: int = 1

    def __post_init__(self):
        require(self.min > 0, "min", "a positive integer", self.min)
        require(self.max >= self.min, "max", f"an integer >= min ({self.min})", self.max)


@dataclass(frozen=True)
class StageResources:
    # "auto": one GPU per actor when the cluster has GPUs, none otherwise.
    num_gpus: Union[float, Literal["auto"]] = "auto"
    num_cpus: float = 1.0
    # Actors: n, {min, max}, or "auto" (GPU stages: split the GPU budget, stages.gpus, between the
    # auto stages by their measured per-item times, and re-balance as they drift; pipelines/autoscale.py).
    concurrency: Union[int, Concurrency, Literal["auto"]] = 1
    batch_size: int = 4

    def __post_init__(self):
        if self.num_gpus != "auto":
            require_finite(self.num_gpus, "num_gpus", "a finite number >= 0 or 'auto'")
        require_finite(self.num_cpus, "num_cpus", "a finite number >= 0")
        require(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        if isinstance(self.concurrency, int):
            require(self.concurrency > 0, "concurrency", "a positive integer or {min, max}", self.concurrency)

    @property
    def min_actors(self) -> int:
        if self.concurrency == "auto":
            return 1
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency.min

    @property
    def max_actors(self) -> int | None:
        """None for "auto": the GPU budget bounds it (pipelines/autoscale.py)."""
        if self.concurrency == "auto":
            return None
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency.max

    def gpus_per_actor(self, cluster_has_gpus: bool) -> float:
        if self.num_gpus == "auto":
            return 1.0 if cluster_has_gpus else 0.0
        return float(self.num_gpus)


@dataclass(frozen=True)
class WriteResources:
    num_cpus: float = 0.25
    # Shards being written at once; also bounds how many decoded shards wait in memory.
    concurrency: int = 2

    def __post_init__(self):
        require_finite(self.num_cpus, "num_cpus", "a finite number >= 0")
        require(self.concurrency > 0, "concurrency", "a positive integer", self.concurrency)


@dataclass(frozen=True)
class QualityMonitorConfig:
    """Decode a fraction of the samples with the reference decoder (the model's own VAE) too, and
    record PSNR/SSIM of the job's decoder against it (pipelines/stages/quality.py)."""

    # Share of the samples monitored, picked by a hash of their key (the same ones on every run).
    fraction: float = 0.25
    # A shard whose monitored samples average below either is flagged (report, `verify --quality`).
    min_psnr: float | None = None  # dB
    min_ssim: float | None = None

    def __post_init__(self):
        require(0 < self.fraction <= 1, "fraction", "a number in (0, 1]", self.fraction)
        if self.min_psnr is not None:
            require_finite(self.min_psnr, "min_psnr", "a PSNR in dB >= 0, or null")
        if self.min_ssim is not None:
            require(0 <= self.min_ssim <= 1, "min_ssim", "an SSIM from 0 to 1, or null", self.min_ssim)


@dataclass(frozen=True)
class InputConfig:
    """Where a kind that reads data (encode, redecode) takes its samples from."""

    # A latentmill output or other webdataset tar shards, a folder of images, or a .parquet/.jsonl
    # list of image paths or URLs, at any fsspec URL.
    url: str
    format: Literal["auto", "webdataset", "folder", "list"] = "auto"
    storage: StorageConfig = field(default_factory=StorageConfig)
    # Transparent pixels of input images are composited on this colour (a name or #rrggbb).
    background: str = "white"
    # An input image with more pixels is rejected from its header, before it is decoded.
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        require(bool(self.url.strip()), "url", "an input URL or path", self.url)
        check_image_input(self.background, self.max_pixels)


def check_image_input(background: str, max_pixels: int) -> None:
    """`input.background` and `input.max_pixels` of a kind that reads images."""
    try:
        parse_colour(background)
    except ValueError as exc:
        raise ConfigError("background", "", detail=f"expected {exc}") from None
    require(max_pixels > 0, "max_pixels", "a positive number of pixels", max_pixels)


@dataclass(frozen=True)
class ImageConfig:
    """The size images are brought to before encoding."""

    height: int = 1024
    width: int = 1024
    # "center-crop": scale the short side to fit, then crop the middle; "refuse": reject images
    # whose size differs (recorded as rejected inputs).
    resize: Literal["center-crop", "refuse"] = "center-crop"

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            require(value > 0 and value % LATENT_FACTOR == 0, name, f"a positive multiple of {LATENT_FACTOR}", value)


@dataclass(frozen=True)
class CostConfig:
    """Prices used to turn allocated resource-hours into money (report: cost per 1,000 images).

    Allocated, not used: a GPU held by an idle actor costs the same as a busy one.
    """

    gpu_hour: float = 0.0  # price of one GPU for one hour
    cpu_hour: float = 0.0  # price of one CPU core for one hour
    currency: str = "USD"

    def __post_init__(self):
        for name in ("gpu_hour", "cpu_hour"):
            value = getattr(self, name)
            require_finite(value, name, "a price >= 0 (per hour)")
        require(bool(self.currency.strip()), "currency", "a currency name, e.g. USD", self.currency)


# -- video (kind: generate-video) -------------------------------------------------------------------

# `decoder: svd-vae` in a video job is the model's own temporal VAE (the tiny model's tiny one).
MODEL_VIDEO_VAE = "svd-vae"


@dataclass(frozen=True)
class VideoModelConfig(ModelConfig):
    """As ModelConfig; a reference is "tiny" (the built-in tiny SVD), a Hugging Face id (e.g.
    stabilityai/stable-video-diffusion-img2vid) or a from_pretrained directory."""

    family: Literal["svd"] = "svd"


@dataclass(frozen=True)
class ConditioningInput:
    """The images clips start from: an image source (`url`) or `builtin: N` deterministic images."""

    # A latentmill output or other webdataset tar shards, a folder of images, or a .parquet/.jsonl
    # list, at any fsspec URL (as `input.url` of encode).
    url: str | None = None
    # N built-in images (smooth colour patterns, the same on every machine): demos and tests.
    builtin: int | None = None
    format: Literal["auto", "webdataset", "folder", "list"] = "auto"
    storage: StorageConfig = field(default_factory=StorageConfig)
    background: str = "white"  # as InputConfig's
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if (self.url is None) == (self.builtin is None):
            raise ConfigError("", "", detail="give exactly one of input.url or input.builtin")
        if self.url is not None:
            require(bool(self.url.strip()), "url", "an input URL or path", self.url)
        if self.builtin is not None:
            require(self.builtin > 0, "builtin", "a positive number of built-in images", self.builtin)
        check_image_input(self.background, self.max_pixels)


@dataclass(frozen=True)
class VideoConfig:
    """Every clip: its length and rate, size, sampling and Stable Video Diffusion's conditioning."""

    frames: int = 14
    fps: int = 7  # of the mp4, and SVD's fps conditioning (the UNet sees fps - 1)
    height: int = 576
    width: int = 1024
    steps: int = 25
    # Classifier-free guidance rises linearly from the first frame to the last, as in SVD.
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    motion_bucket_id: int = 127  # more: more motion
    noise_aug_strength: float = 0.02  # noise added to the conditioning image
    # Frames decoded at once (memory bound); null: the whole clip. Shorter chunks need a decoder
    # that decodes chunks exactly (tae-temporal); the SVD VAE decodes whole clips.
    decode_chunk_size: int | None = None

    def __post_init__(self):
        require(self.frames >= 1, "frames", "an integer >= 1", self.frames)
        require(self.fps > 0, "fps", "a positive integer (frames per second)", self.fps)
        require(self.steps > 0, "steps", "a positive integer", self.steps)
        require(self.min_guidance_scale >= 0, "min_guidance_scale", "a number >= 0", self.min_guidance_scale)
        require(self.max_guidance_scale >= self.min_guidance_scale, "max_guidance_scale",
                f"a number >= min_guidance_scale ({self.min_guidance_scale})", self.max_guidance_scale)
        require(self.motion_bucket_id >= 0, "motion_bucket_id", "an integer >= 0", self.motion_bucket_id)
        require(self.noise_aug_strength >= 0, "noise_aug_strength", "a number >= 0", self.noise_aug_strength)
        for name in ("height", "width"):
            value = getattr(self, name)
            require(value > 0 and value % LATENT_FACTOR == 0, name,
                    f"a positive multiple of {LATENT_FACTOR} (the VAE's latent factor)", value)
        if self.decode_chunk_size is not None:
            require(self.decode_chunk_size >= 1, "decode_chunk_size", "an integer >= 1 or null (all frames)",
                    self.decode_chunk_size)


@dataclass(frozen=True)
class VideoOutputConfig:
    url: str
    samples_per_shard: int = 64
    crf: int = 18  # H.264 constant rate factor: 0 lossless .. 51 worst; 18 looks lossless to most eyes
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow"] = "medium"
    poster: bool = True  # the first frame as <key>.poster.png
    save_latents: bool = False  # the clip's latents (F, C, h, w) as <key>.latent.npy
    mode: Literal["resume", "overwrite", "extend"] = "resume"
    storage: StorageConfig = field(default_factory=StorageConfig)
    lease_ttl_s: float = 60.0  # as for image outputs (OutputConfig)

    def __post_init__(self):
        check_output_fields(self)
        require(0 <= self.crf <= 51, "crf", "an integer from 0 to 51", self.crf)
