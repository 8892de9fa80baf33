"""Pick the torch device an actor runs on."""

from __future__ import annotations


def pick_device() -> str:
    # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs, so cuda:0 is this actor's first GPU.
    # On a machine without CUDA (or a logical GPU in tests) the model runs on the CPU.
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
