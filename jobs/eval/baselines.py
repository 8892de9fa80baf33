"""The baselines of `latentmill eval`: what a decoder has to beat before its numbers say it decodes.

    --baseline grey             every image 0.5 grey
    --baseline mean-colour      every image the training images' mean colour (the best constant
                                colour in squared error on them)
    --baseline linear           the least-squares linear decoder fitted on the training set
    --baseline untrained:ARCH   ARCH with the random weights a train-decoder job starts from (seed 0)
                                and its latent normalisation (the training latents reach the first
                                layer with mean 0, std 1)

Each is a `Decoder`, scored by the same code as every other row. The training set is --train-data
(every sample of it, up to a limit), else the input's own training split when --held-out-fraction
is given, else none: then mean-colour and untrained fall back to the evaluated samples themselves
(the table says so: that mean colour has seen the test images) and linear is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import decoders
from decoders.base import Decoder
from jobs.train.data import normalising_scaling
from pipelines.errors import ConfigError

CONSTANTS = {"grey": "grey 0.5", "mean-colour": "mean colour"}
UNTRAINED = "untrained:"
# Latents over which the normalisation is measured: as many as a train-decoder job measures.
NORMALISATION_SAMPLES = 256


@dataclass(frozen=True)
class TrainingSet:
    """Latents (N, C, h, w) and images in [0, 1] (N, 3, H, W) the baselines are computed from."""

    description: str
    latents: torch.Tensor
    images: torch.Tensor
    is_eval_set: bool = False  # the fallback: the evaluated samples themselves


def check_names(names: list[str]) -> None:
    for name in names:
        if name not in (*CONSTANTS, "linear") and not (name.startswith(UNTRAINED) and len(name) > len(UNTRAINED)):
            raise ConfigError("--baseline", "grey, mean-colour, linear or untrained:ARCH (e.g. untrained:lean)", name)


def mean_colour(images: torch.Tensor) -> tuple[float, float, float]:
    """Per channel mean of images (N, 3, H, W) in [0, 1], in float64."""
    r, g, b = images.double().mean(dim=(0, 2, 3)).tolist()
    return r, g, b


def constant_decoder(colour, name: str, latent_channels: int, upscale: int):
    # lazy: keeps diffusers out of processes that never call this
    from decoders.constant import ConstantDecoder

    blocks = (3,) * (upscale.bit_length())  # 2 ** (len - 1) == upscale
    model = ConstantDecoder(latent_channels=latent_channels, block_out_channels=blocks, colour=tuple(colour))
    return Decoder(model.eval().requires_grad_(False), name)


def untrained_decoder(arch: str, latents: torch.Tensor, name: str):
    """`arch` with a train-decoder job's initial weights, normalising `latents` as that job would."""
    try:
        decoder = decoders.build(f"random:{arch}", device="cpu")
    except ValueError as exc:
        raise ConfigError("--baseline", "untrained:ARCH with an architecture of decoders/", arch, detail=str(exc)) from None
    sample = latents[:NORMALISATION_SAMPLES].double()
    mean, std = float(sample.mean()), float(sample.std(correction=0))  # as jobs/train/data.latent_statistics
    if not std > 0:
        raise ConfigError("--baseline", "", detail=f"untrained:{arch}: the training latents are constant ({mean})")
    decoder.model.register_to_config(**normalising_scaling(mean, std))
    decoder.name = name
    return decoder


def baseline_decoders(names: list[str], training: TrainingSet | None, latent_channels: int, upscale: int) -> list:
    """The named baselines as Decoders on the CPU, in the order given."""
    # lazy: keeps diffusers out of processes that never call this
    from decoders.linear import LinearDecoder

    chosen = []
    suffix = " (eval set)" if training is not None and training.is_eval_set else ""
    for name in names:
        if name == "grey":
            chosen.append(constant_decoder((0.5, 0.5, 0.5), CONSTANTS[name], latent_channels, upscale))
        elif name == "mean-colour":
            chosen.append(constant_decoder(mean_colour(training.images), CONSTANTS[name] + suffix, latent_channels, upscale))
        elif name == "linear":
            if training is None or training.is_eval_set:
                raise ConfigError("--baseline", "", detail="linear needs a training set to fit on: give --train-data "
                                  "URL (an encode output) or --held-out-fraction")
            model = LinearDecoder(latent_channels=latent_channels, block_out_channels=(3,) * upscale.bit_length())
            model.fit(training.latents, training.images)
            chosen.append(Decoder(model.eval().requires_grad_(False), "linear (least squares)"))
        else:
            arch = name[len(UNTRAINED):]
            chosen.append(untrained_decoder(arch, training.latents, f"{arch}, untrained{suffix}"))
    return chosen


def output_looks(images: torch.Tensor) -> dict:
    """What a decoder's images look like in two numbers, for readers of the table (e.g. all black):
    the mean pixel value (over images and channels, in [0, 1]) and the mean per-image standard deviation."""
    x = images.double().flatten(1)
    return {"output_mean": float(x.mean()), "output_spread": float(x.std(dim=1, correction=0).mean())}
