"""The GPU settings of `model:` applied to a stage's modules: memory format, torch.compile, backends.

Attention needs nothing here: diffusers' attention processors call PyTorch's
scaled_dot_product_attention (flash / memory-efficient kernels on CUDA) by default.
"""

from __future__ import annotations

import time

import torch


def configure_backends(device: str) -> dict:
    """On CUDA: cuDNN picks the fastest convolution algorithm per shape (our shapes repeat), and
    Ampere or newer GPUs run float32 matmuls and convolutions in TF32. Nothing on a CPU."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return {}
    torch.backends.cudnn.benchmark = True
    tf32 = torch.cuda.get_device_capability() >= (8, 0)
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return {"cudnn_benchmark": True, "tf32": tf32}


def prepare(module: torch.nn.Module, *, channels_last: bool, compile: bool) -> torch.nn.Module:
    """channels_last: 2-D convolutions' kernels in NHWC (tensor cores' layout; inputs follow);
    video models' 3-D kernels keep theirs. compile: torch.compile the module in place (its
    attributes, e.g. a diffusers config, stay reachable)."""
    if channels_last:
        for p in module.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    if compile:
        module.compile()
    return module


def timed(fn) -> float:
    """Seconds `fn()` takes, CUDA work included (a compile warm-up's cost)."""
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started
