"""`random:sdxl` and `random:svd-xt`: the full-size published architectures with random weights.

`random:sdxl-tiny` is the same build (on the device, from a fixed seed, never saved) of the built-in
tiny model's configuration, as decoders have `random:ARCH-tiny`: tests and CPU smoke runs of
commands that GPUs run with `random:sdxl` take the same code path in seconds.

This module names them (no torch: the driver checks specs with it); pipelines/models/random_build.py
builds them.

A full-size architecture costs what the trained model costs (parameters, FLOPs, memory, time), so
every GPU figure can be measured without downloading weights; its outputs are noise, and every
report and sample's metadata says so. The weights are made on the target device, in the spec's
dtype, from a fixed seed, in seconds on a GPU, and never saved to disk.

Same seed and device type -> the same weights (CPU and CUDA generators differ from each other).
The tokenizers are the built-in tiny model's (pipelines/models/tiny_sdxl.py): any token ids work
for weights that mean nothing, and nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

RANDOM_SDXL = "random:sdxl"
RANDOM_SVD_XT = "random:svd-xt"
RANDOM_SDXL_TINY = "random:sdxl-tiny"
# Part of the job identity: a change to the configs or the fill below must change it.
RANDOM_VERSION = "published-configs-v1"
SEED = 0
NOISE_NOTE = "random weights (outputs are noise; for timing and memory figures only)"


@dataclass(frozen=True)
class RandomModel:
    name: str
    family: str  # "sdxl" (image) or "svd" (video)
    vae: str  # the decoder registry's random build of the model's own VAE


RANDOM_MODELS = {
    RANDOM_SDXL: RandomModel(RANDOM_SDXL, "sdxl", "random:sdxl-vae"),
    RANDOM_SVD_XT: RandomModel(RANDOM_SVD_XT, "svd", "random:svd-vae"),
    RANDOM_SDXL_TINY: RandomModel(RANDOM_SDXL_TINY, "sdxl", "random:sdxl-vae-tiny"),
}


def is_random_model(reference: str) -> bool:
    return reference in RANDOM_MODELS
