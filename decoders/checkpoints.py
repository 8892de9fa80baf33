"""Reading weights safely and loading them strictly.

- safetensors is the default format: it holds tensors only, so reading it can run no code.
- `.pt` / `.pth` / `.bin` go through `torch.load(weights_only=True)`, whose unpickler only builds
  tensors and plain containers; a pickle that would call anything else is refused, never executed.
- A state dict must match the model exactly (same keys, same shapes). A partial load of another
  architecture's checkpoint would decode noise silently, so it is an error.
"""

from __future__ import annotations

import io
import json
import os
import pickle

import fsspec
import torch
from torch import nn

from .references import PICKLE_SUFFIXES, SAFE_SUFFIXES


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint that would execute code (or hold non-tensor objects) when loaded."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the architecture it is loaded into."""


def _open(path: str, mode: str = "rb"):
    if "://" in path:
        return fsspec.open(path, mode).open()
    return open(path, mode)


def read_bytes(path: str) -> bytes:
    with _open(path) as f:
        return f.read()


def read_json(path: str) -> dict:
    return json.loads(read_bytes(path).decode("utf-8"))


def exists(path: str) -> bool:
    if "://" in path:
        fs, p = fsspec.core.url_to_fs(path)
        return fs.exists(p)
    return os.path.exists(path)


def safetensors_metadata(path: str) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty if none)."""
    with _open(path) as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return header.get("__metadata__") or {}


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a pickle loaded with `weights_only=True`."""
    if path.endswith(SAFE_SUFFIXES):
        # lazy: keeps safetensors out of processes that never call this
        from safetensors.torch import load as load_safetensors

        return load_safetensors(read_bytes(path))
    if path.endswith(PICKLE_SUFFIXES):
        try:
            obj = torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is a pickle that references objects other than tensors "
                f"(it could run code when unpickled), so torch.load(weights_only=True) rejected it. "
                f"Convert it to safetensors from an environment you trust. Details: {str(e).splitlines()[0]}"
            ) from None
        # Training scripts often nest the weights: {"state_dict": {...}}.
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UnsafeCheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
        return obj
    raise ValueError(f"{path}: unknown checkpoint format; expected one of {SAFE_SUFFIXES + PICKLE_SUFFIXES}")


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy `state_dict` into `model`, or raise CheckpointMismatchError listing every difference."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:

        def show(items, n=5):
            more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
            return ", ".join(items[:n]) + more

        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches [{show(shapes, 3)}]")
        if missing:
            parts.append(f"{len(missing)} missing keys [{show(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{show(unexpected)}]")
        raise CheckpointMismatchError(
            f"{source} does not match {type(model).__name__} (is it a checkpoint of another architecture "
            f"or config?): " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)
