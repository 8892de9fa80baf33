"""The registry as plain data: architectures, the published weights of registered names, latent spaces.

Three kinds of names, so nobody decodes noise by accident:
- a registered name (`taesd`, `taesdxl`, `sdxl-vae`, `sdxl-vae-fp16-fix`, `svd-vae`) means an
  architecture with its published trained weights, fetched through the Hugging Face hub;
- `random:ARCH` builds architecture ARCH with random weights from a fixed seed (real parameter
  counts, FLOPs and timings; noise for pixels), `random:ARCH-tiny` the same class a few channels
  wide, for tests and demos;
- architectures without published weights (tae-192, effvit, lean, tae-temporal) have no bare name: they
  are `random:...` builds or checkpoints of your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import weights
from .weights import HubWeights

# _class_name in config.json -> (module, class). Ours live in this package.
MODEL_CLASSES = {
    "AutoencoderKL": ("diffusers", "AutoencoderKL"),
    "AutoencoderTiny": ("diffusers", "AutoencoderTiny"),
    "AutoencoderKLTemporalDecoder": ("diffusers", "AutoencoderKLTemporalDecoder"),
    "EfficientViTDecoder": ("decoders.effvit", "EfficientViTDecoder"),
    "TemporalTinyDecoder": ("decoders.temporal", "TemporalTinyDecoder"),
    "LeanDecoder": ("decoders.lean", "LeanDecoder"),
    "LinearDecoder": ("decoders.linear", "LinearDecoder"),  # the least-squares baseline (decoders/linear.py)
    "ConstantDecoder": ("decoders.constant", "ConstantDecoder"),  # one colour for any latent (eval baselines)
}
VIDEO_CLASSES = {"AutoencoderKLTemporalDecoder", "TemporalTinyDecoder"}
# diffusers implements tiled decoding for these; attention-based and temporal decoders have none.
TILING_CLASSES = {"AutoencoderKL", "AutoencoderTiny"}
# Causal temporal decoders decode a clip chunk by chunk with the frames of a whole-clip decode.
CHUNKING_CLASSES = {"TemporalTinyDecoder"}

# What each latent space is; a decoder trained on one decodes garbage from another.
LATENT_SPACES = {
    "sd": "Stable Diffusion 1.x/2.x VAE latents",
    "sdxl": "SDXL VAE latents",
    "svd": "Stable Video Diffusion latents",
}

RANDOM_PREFIX = "random:"
TINY_SUFFIX = "-tiny"

_KL_BLOCKS = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


@dataclass(frozen=True)
class Architecture:
    name: str
    class_name: str
    config: dict
    # Same class, a few channels wide: for tests and demos that need the real code path, fast.
    tiny: dict = field(default_factory=dict)
    about: str = ""

    @property
    def is_video(self) -> bool:
        return self.class_name in VIDEO_CLASSES

    @property
    def supports_tiling(self) -> bool:
        return self.class_name in TILING_CLASSES

    @property
    def supports_chunking(self) -> bool:
        return self.class_name in CHUNKING_CLASSES


@dataclass(frozen=True)
class Published:
    """A registered name: an architecture with published trained weights for one latent space."""

    name: str
    architecture: str
    weights: HubWeights
    latent_space: str
    about: str = ""


@dataclass(frozen=True)
class Entry:
    """What a registered or random name stands for, known without loading anything."""

    name: str
    architecture: Architecture
    tiny: bool = False
    weights: HubWeights | None = None  # None: random weights
    latent_space: str | None = None  # None: random weights belong to no latent space

    @property
    def is_video(self) -> bool:
        return self.architecture.is_video

    @property
    def supports_tiling(self) -> bool:
        return self.architecture.supports_tiling

    @property
    def supports_chunking(self) -> bool:
        return self.architecture.supports_chunking


ARCHITECTURES = {
    a.name: a
    for a in [
        Architecture(
            "sdxl-vae",
            "AutoencoderKL",
            # stabilityai/sdxl-vae config.json
            dict(_KL_BLOCKS, block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                 norm_num_groups=32, act_fn="silu", sample_size=1024, scaling_factor=0.13025, force_upcast=True),
            dict(_KL_BLOCKS, block_out_channels=[8, 16, 16, 16], layers_per_block=1, latent_channels=4,
                 norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True),
            "SDXL VAE (AutoencoderKL); the baseline",
        ),
        Architecture(
            "taesd",
            "AutoencoderTiny",
            {},  # AutoencoderTiny defaults are TAESD
            dict(encoder_block_out_channels=[8, 8, 8, 8], decoder_block_out_channels=[8, 8, 8, 8]),
            "TAESD (AutoencoderTiny defaults), latents at scale 1.0",
        ),
        Architecture(
            "tae-192",
            "AutoencoderTiny",
            dict(decoder_block_out_channels=[192, 192, 192, 192]),
            dict(encoder_block_out_channels=[8, 8, 8, 8], decoder_block_out_channels=[12, 12, 12, 12]),
            "TAE-192 (AutoencoderTiny, decoder channels 192) from arXiv 2503.04871",
        ),
        Architecture(
            "effvit",
            "EfficientViTDecoder",
            {},  # defaults in decoders/effvit.py
            dict(block_out_channels=[8, 16, 16, 32], layers_per_block=[1, 1, 1, 1], attention_head_dim=8),
            "EfficientViT-style decoder: multi-scale linear attention + GLU MBConv at low resolution",
        ),
        Architecture(
            "lean",
            "LeanDecoder",
            {},  # defaults in decoders/lean.py
            dict(block_out_channels=[3, 8, 8, 8], layers_per_block=[0, 1, 1, 1]),
            "TAESD-style decoder without full-resolution convolutions (pixel-shuffle head): under 1/20 of "
            "the SDXL VAE decoder's FLOPs",
        ),
        Architecture(
            "tae-temporal",
            "TemporalTinyDecoder",
            {},  # defaults in decoders/temporal.py
            dict(block_out_channels=[8, 8, 8, 8]),
            "TAESD-width video decoder with causal temporal mixing across frames",
        ),
        Architecture(
            "svd-vae",
            "AutoencoderKLTemporalDecoder",
            # stabilityai/stable-video-diffusion-img2vid vae/config.json
            dict(down_block_types=["DownEncoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                 layers_per_block=2, latent_channels=4, sample_size=768, scaling_factor=0.18215, force_upcast=True),
            # its decoder hard-codes 32 norm groups, so 32 channels is as narrow as it gets
            dict(down_block_types=["DownEncoderBlock2D"] * 4, block_out_channels=[32, 32, 32, 32],
                 layers_per_block=1, latent_channels=4, sample_size=64, scaling_factor=0.18215, force_upcast=True),
            "SVD VAE (AutoencoderKLTemporalDecoder); the video baseline",
        ),
    ]
}

PUBLISHED = {
    p.name: p
    for p in [
        Published("taesd", "taesd", HubWeights("madebyollin/taesd"), "sd", "TAESD for SD 1.x/2.x latents"),
        Published("taesdxl", "taesd", HubWeights("madebyollin/taesdxl"), "sdxl", "TAESD trained for SDXL latents"),
        Published("sdxl-vae", "sdxl-vae", HubWeights("stabilityai/sdxl-vae"), "sdxl", "the SDXL VAE"),
        Published("sdxl-vae-fp16-fix", "sdxl-vae", HubWeights("madebyollin/sdxl-vae-fp16-fix"), "sdxl",
                  "the SDXL VAE fine-tuned not to overflow in float16"),
        Published("svd-vae", "svd-vae", HubWeights("stabilityai/stable-video-diffusion-img2vid-xt", "vae"), "svd",
                  "Stable Video Diffusion's temporal VAE"),
    ]
}


def random_name(architecture: str, tiny: bool = False) -> str:
    return RANDOM_PREFIX + architecture + (TINY_SUFFIX if tiny else "")


def available() -> list[str]:
    """Every name `decoders.load` takes: published weights first, then the random builds."""
    return [*PUBLISHED, *(random_name(a, tiny) for tiny in (False, True) for a in ARCHITECTURES)]


def lookup(name: str) -> Entry | None:
    """The entry of a registered (`taesd`) or random (`random:taesd`, `random:taesd-tiny`) name."""
    if name in PUBLISHED:
        p = PUBLISHED[name]
        return Entry(name, ARCHITECTURES[p.architecture], weights=p.weights, latent_space=p.latent_space)
    if name.startswith(RANDOM_PREFIX):
        arch = name[len(RANDOM_PREFIX):]
        tiny = arch.endswith(TINY_SUFFIX) and arch not in ARCHITECTURES
        arch = arch[: -len(TINY_SUFFIX)] if tiny else arch
        if arch in ARCHITECTURES:
            return Entry(name, ARCHITECTURES[arch], tiny=tiny)
    return None


def fetch_weights(name: str, subfolder: str | None = None) -> str | None:
    """The local directory of the published weights of a registered name or a Hugging Face id
    (downloaded into the hub cache if needed); None for a random build. Raises WeightsUnavailable."""
    entry = lookup(name) if subfolder is None else None
    if entry is not None:
        return entry.weights and weights.fetch(entry.weights, name, random_name(entry.architecture.name))
    return weights.fetch(HubWeights(name, subfolder), name)


def published_by_repo(repo_id: str, subfolder: str | None = None) -> Published | None:
    """The registered row whose weights a Hugging Face id (and subfolder) names, if any."""
    return next((p for p in PUBLISHED.values() if p.weights == HubWeights(repo_id, subfolder)), None)


def unknown_name_help(name: str) -> str:
    """Why a bare name is not loadable, and what to write instead."""
    if name in ARCHITECTURES:
        return (
            f"{name!r} is an architecture without published weights: give a checkpoint of it (a "
            f"save_pretrained directory or .safetensors file), or {random_name(name)!r} for random weights "
            f"(noise: tests and benchmarks only)"
        )
    return (
        f"{name!r} is not a registered decoder. Registered (trained weights): {', '.join(PUBLISHED)}; "
        f"random weights: random:ARCH or random:ARCH-tiny with ARCH one of {', '.join(ARCHITECTURES)}; "
        f"or a checkpoint path or Hugging Face id"
    )


class LatentSpaceMismatch(ValueError):
    """A decoder trained on one latent space asked to decode another's latents."""


def check_latent_space(decoder, model_family: str) -> None:
    """Refuse a decoder whose latent space is not `model_family`'s (`sd`, `sdxl`, `svd`).

    `decoder` is a registered name, the Hugging Face id of a registered row, or a loaded `Decoder`;
    random builds and checkpoints that do not record a latent space pass (nothing to check against).
    """
    if model_family not in LATENT_SPACES:
        raise ValueError(f"unknown model family {model_family!r}; expected one of {list(LATENT_SPACES)}")
    if isinstance(decoder, str):
        entry, row = lookup(decoder), published_by_repo(decoder)
        name, space = decoder, entry.latent_space if entry else row.latent_space if row else None
    else:
        name, space = decoder.name, decoder.latent_space
    if space is None or space == model_family:
        return
    fitting = [p.name for p in PUBLISHED.values() if p.latent_space == model_family]
    raise LatentSpaceMismatch(
        f"decoder {name!r} decodes {LATENT_SPACES[space]} ({space!r}), but a {model_family!r} model makes "
        f"{LATENT_SPACES[model_family]}; its images would be garbage. Decoders for {model_family!r} latents: "
        f"{', '.join(fitting) or 'none registered'} (or a checkpoint trained on them)"
    )
