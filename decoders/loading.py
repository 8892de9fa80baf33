"""`load` and `build`: a name, a directory, a weights file or a Hugging Face id -> Decoder.

Every load with weights ends in `_load_dir` or `_load_file`: the architecture rebuilt from its
config, then the weights copied in strictly (any missing, extra or misshapen tensor is an error).
Hub weights are first fetched into the hub cache, so they take the same strict path.
"""

from __future__ import annotations

import importlib
import json
import os

import torch

from . import checkpoints as ckpt
from . import references
from .base import META_FILE, Decoder
from .registry import (
    ARCHITECTURES,
    MODEL_CLASSES,
    VIDEO_CLASSES,
    fetch_weights,
    lookup,
    published_by_repo,
    random_name,
    unknown_name_help,
)

DEFAULT_SEED = 0


def model_class(class_name: str):
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"unsupported decoder class {class_name!r}; supported: {sorted(MODEL_CLASSES)}")
    module, attr = MODEL_CLASSES[class_name]
    return getattr(importlib.import_module(module), attr)


def _finish(model, name: str, device, dtype, latent_space: str | None = None) -> Decoder:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().requires_grad_(False)
    # nn.Module.to: ModelMixin.to warns about fp32-pinned modules, which these models have none of.
    torch.nn.Module.to(model, device=device, dtype=dtype or torch.float32)
    dec = Decoder(model, name, is_video=type(model).__name__ in VIDEO_CLASSES, latent_space=latent_space)
    dec.upcast_if_needed()
    return dec.eval()


def build_model(class_name: str, config: dict, *, seed: int = DEFAULT_SEED, device=None):
    """A model from its config with random weights from `seed`, leaving the global RNG untouched."""
    cls = model_class(class_name)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = cls.from_config(config)
        # Legacy constructors (torch.Tensor([x])) ignore the default device; move stragglers.
        return torch.nn.Module.to(model, "meta")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.from_config(config)


def build(name: str, *, tiny: bool = False, seed: int = DEFAULT_SEED, device=None, dtype=None) -> Decoder:
    """An architecture (`taesd` or `random:taesd`) with random weights; named `random:ARCH[-tiny]`.

    `tiny=True` gives the same class a few channels wide. device="meta" builds it without
    allocating memory (for FLOP counting).
    """
    entry = lookup(name) if name.startswith("random:") else None
    if entry is not None:
        arch, tiny = entry.architecture, tiny or entry.tiny
    elif name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
    else:
        raise ValueError(f"unknown decoder architecture {name!r}; architectures: {list(ARCHITECTURES)}")
    model = build_model(arch.class_name, arch.tiny if tiny else arch.config, seed=seed, device=device)
    label = random_name(arch.name, tiny)
    if device is not None and torch.device(device).type == "meta":
        return Decoder(model.eval().requires_grad_(False), label, is_video=arch.is_video)
    return _finish(model, label, device, dtype)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if references.is_url(root) else os.path.join(root, *parts)


_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


def _read_dir_weights(root: str) -> tuple[str, dict]:
    for fname in _WEIGHT_FILES:
        path = _join(root, fname)
        if not ckpt.exists(path):
            continue
        if fname.endswith(".index.json"):  # sharded: weight name -> shard file
            shards = sorted(set(ckpt.read_json(path)["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(ckpt.read_state_dict(_join(root, shard)))
            return path, sd
        return path, ckpt.read_state_dict(path)
    raise FileNotFoundError(f"{root}: no weights file; expected one of {list(_WEIGHT_FILES)}")


def _load_dir(root: str, name: str | None, device, dtype, latent_space: str | None = None) -> Decoder:
    config_path = _join(root, "config.json")
    if not ckpt.exists(config_path):
        raise FileNotFoundError(f"{root}: no config.json (expected a diffusers save_pretrained directory)")
    config = ckpt.read_json(config_path)
    model = build_model(config.get("_class_name"), config)
    source, state_dict = _read_dir_weights(root)
    ckpt.load_strict(model, state_dict, source)
    meta_path = _join(root, META_FILE)
    if name is None and ckpt.exists(meta_path):
        meta = ckpt.read_json(meta_path)
        name, latent_space = meta.get("name"), latent_space or meta.get("latent_space")
    return _finish(model, name or root, device, dtype, latent_space)


def _file_config(path: str, config) -> tuple[str, dict, dict]:
    """(class_name, config, saved metadata) for a weights file, from `config` or files next to it."""
    arch = ARCHITECTURES.get(config) if isinstance(config, str) else None
    if arch is not None:
        return arch.class_name, arch.config, {"name": random_name(arch.name)}
    if isinstance(config, dict):
        return config["_class_name"], config, {}
    if config is not None:  # a path to a config.json
        cfg = ckpt.read_json(str(config))
        return cfg["_class_name"], cfg, {}
    stem = path.rsplit(".", 1)[0]
    for candidate in (stem + ".json", _join(os.path.dirname(path) or ".", "config.json")):
        if ckpt.exists(candidate):
            cfg = ckpt.read_json(candidate)
            if "_class_name" in cfg:
                return cfg["_class_name"], cfg, {}
    if path.endswith(ckpt.SAFE_SUFFIXES):
        meta = ckpt.safetensors_metadata(path)
        if "config" in meta:
            cfg = json.loads(meta["config"])
            return cfg["_class_name"], cfg, meta
    raise FileNotFoundError(
        f"{path}: cannot tell its architecture. Put its diffusers config next to it ({os.path.basename(stem)}.json "
        f"or config.json), save it with Decoder.save_file (config in the safetensors header), or pass "
        f"config=<architecture name, config dict or config.json path>"
    )


def _load_file(path: str, config, device, dtype) -> Decoder:
    class_name, cfg, meta = _file_config(path, config)
    model = build_model(class_name, cfg)
    ckpt.load_strict(model, ckpt.read_state_dict(path), path)
    return _finish(model, meta.get("name") or path, device, dtype, meta.get("latent_space") or None)


def load(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    subfolder: str | None = None,
    config: str | dict | None = None,
) -> Decoder:
    """Load a decoder.

    name_or_path:
      - a registered name (`registry.PUBLISHED`: taesd, taesdxl, sdxl-vae, sdxl-vae-fp16-fix,
        svd-vae): its published weights from the Hugging Face hub cache, downloaded when missing
        and the hub is reachable; `WeightsUnavailable` says how to provide them otherwise;
      - `random:ARCH` / `random:ARCH-tiny`: the architecture with random weights (fixed seed);
      - a local or fsspec (`s3://...`) directory in diffusers `save_pretrained` layout, e.g. a saved
        AutoencoderKL, or a saved pipeline with `subfolder="vae"`;
      - a `.safetensors` file (or `.pt`/`.pth`, read with `weights_only=True`) whose config is
        `config=`, `<stem>.json` or `config.json` beside it, or the file's own header;
      - a Hugging Face model id (safetensors weights, through the same hub cache).
    Names win over same-named directories (write `./taesd` for a directory).
    device: defaults to CUDA when available, else CPU. dtype: defaults to float32; float16 on a
    `force_upcast` VAE (SDXL, SVD) runs in float32, as diffusers does.
    """
    s = os.fspath(name_or_path)
    entry = lookup(s) if subfolder is None else None
    if entry is not None and entry.weights is None:
        return build(s, device=device, dtype=dtype)
    if entry is not None:
        return _load_dir(fetch_weights(s), s, device, dtype, entry.latent_space)
    if s in ARCHITECTURES and subfolder is None:
        raise ValueError(f"cannot load decoder: {unknown_name_help(s)}")
    target = _join(s, subfolder) if subfolder else s
    if references.is_path(s):
        local_dir = not references.is_url(s) and os.path.isdir(target)
        if local_dir or (references.is_url(s) and ckpt.exists(_join(target, "config.json"))):
            return _load_dir(target, None, device, dtype)
        if s.endswith(ckpt.SAFE_SUFFIXES + ckpt.PICKLE_SUFFIXES):
            if not ckpt.exists(s):
                raise FileNotFoundError(f"checkpoint not found: {s}")
            return _load_file(s, config, device, dtype)
    elif references.is_hub_id(s):
        row = published_by_repo(s, subfolder)  # a registered repo given by its id keeps its latent space
        label = s + (f"/{subfolder}" if subfolder else "")
        return _load_dir(fetch_weights(s, subfolder), label, device, dtype, row.latent_space if row else None)
    raise ValueError(
        f"cannot load decoder {s!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        + f": not a directory with config.json, not a .safetensors/.pt file; {unknown_name_help(s)}"
    )
