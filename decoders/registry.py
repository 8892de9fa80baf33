"""Registered decoders and `load`: a name, a directory, a weights file or a Hugging Face id -> Decoder.

Registered names are built from their config with random weights from a fixed seed (no download):
they have the real architecture, so parameter counts, FLOPs and timings are real, but their pixels
are noise until trained weights are loaded.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import torch

from . import checkpoints as ckpt
from .base import META_FILE, Decoder

# _class_name in config.json -> (module, class). Ours live in this package.
MODEL_CLASSES = {
    "AutoencoderKL": ("diffusers", "AutoencoderKL"),
    "AutoencoderTiny": ("diffusers", "AutoencoderTiny"),
    "AutoencoderKLTemporalDecoder": ("diffusers", "AutoencoderKLTemporalDecoder"),
    "EfficientViTDecoder": ("decoders.effvit", "EfficientViTDecoder"),
    "TemporalTinyDecoder": ("decoders.temporal", "TemporalTinyDecoder"),
}
VIDEO_CLASSES = {"AutoencoderKLTemporalDecoder", "TemporalTinyDecoder"}

_KL_BLOCKS = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    class_name: str
    config: dict
    # Same class, a few channels wide: for tests and demos that need the real code path, fast.
    tiny: dict = field(default_factory=dict)
    about: str = ""

    @property
    def is_video(self) -> bool:
        return self.class_name in VIDEO_CLASSES


SPECS = {
    s.name: s
    for s in [
        DecoderSpec(
            "sdxl-vae",
            "AutoencoderKL",
            # stabilityai/sdxl-vae config.json
            dict(_KL_BLOCKS, block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                 norm_num_groups=32, act_fn="silu", sample_size=1024, scaling_factor=0.13025, force_upcast=True),
            dict(_KL_BLOCKS, block_out_channels=[8, 16, 16, 16], layers_per_block=1, latent_channels=4,
                 norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True),
            "SDXL VAE (AutoencoderKL); the baseline",
        ),
        DecoderSpec(
            "taesd",
            "AutoencoderTiny",
            {},  # AutoencoderTiny defaults are TAESD
            dict(encoder_block_out_channels=[8, 8, 8, 8], decoder_block_out_channels=[8, 8, 8, 8]),
            "TAESD (AutoencoderTiny defaults), latents at scale 1.0",
        ),
        DecoderSpec(
            "tae-192",
            "AutoencoderTiny",
            dict(decoder_block_out_channels=[192, 192, 192, 192]),
            dict(encoder_block_out_channels=[8, 8, 8, 8], decoder_block_out_channels=[12, 12, 12, 12]),
            "TAE-192 (AutoencoderTiny, decoder channels 192) from arXiv 2503.04871",
        ),
        DecoderSpec(
            "effvit",
            "EfficientViTDecoder",
            {},  # defaults in decoders/effvit.py
            dict(block_out_channels=[8, 16, 16, 32], layers_per_block=[1, 1, 1, 1], attention_head_dim=8),
            "EfficientViT-style decoder: multi-scale linear attention + GLU MBConv at low resolution",
        ),
        DecoderSpec(
            "tae-temporal",
            "TemporalTinyDecoder",
            {},  # defaults in decoders/temporal.py
            dict(block_out_channels=[8, 8, 8, 8]),
            "TAESD-width video decoder with causal temporal mixing across frames",
        ),
        DecoderSpec(
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

DEFAULT_SEED = 0


def available() -> list[str]:
    """Registered decoder names."""
    return list(SPECS)


def model_class(class_name: str):
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"unsupported decoder class {class_name!r}; supported: {sorted(MODEL_CLASSES)}")
    module, attr = MODEL_CLASSES[class_name]
    return getattr(importlib.import_module(module), attr)


def _finish(model, name: str, device, dtype) -> Decoder:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().requires_grad_(False)
    # nn.Module.to: ModelMixin.to warns about fp32-pinned modules, which these models have none of.
    torch.nn.Module.to(model, device=device, dtype=dtype or torch.float32)
    dec = Decoder(model, name, is_video=type(model).__name__ in VIDEO_CLASSES)
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
    """A registered decoder with random weights; `tiny=True` gives the same class a few channels wide.

    device="meta" builds it without allocating memory (for FLOP counting).
    """
    if name not in SPECS:
        raise ValueError(f"unknown decoder {name!r}; registered: {available()}")
    spec = SPECS[name]
    model = build_model(spec.class_name, spec.tiny if tiny else spec.config, seed=seed, device=device)
    if device is not None and torch.device(device).type == "meta":
        return Decoder(model.eval().requires_grad_(False), name, is_video=spec.is_video)
    return _finish(model, name + ("-tiny" if tiny else ""), device, dtype)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else os.path.join(root, *parts)


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


def _load_dir(root: str, name: str | None, device, dtype) -> Decoder:
    config_path = _join(root, "config.json")
    if not ckpt.exists(config_path):
        raise FileNotFoundError(f"{root}: no config.json (expected a diffusers save_pretrained directory)")
    config = ckpt.read_json(config_path)
    class_name = config.get("_class_name")
    model = build_model(class_name, config)
    source, state_dict = _read_dir_weights(root)
    ckpt.load_strict(model, state_dict, source)
    meta_path = _join(root, META_FILE)
    if name is None and ckpt.exists(meta_path):
        name = ckpt.read_json(meta_path).get("name")
    return _finish(model, name or root, device, dtype)


def _file_config(path: str, config) -> tuple[str, dict, str | None]:
    """(class_name, config, saved name) for a weights file, from `config` or files next to it."""
    import json

    if isinstance(config, str) and config in SPECS:
        return SPECS[config].class_name, SPECS[config].config, config
    if isinstance(config, dict):
        return config["_class_name"], config, None
    if config is not None:  # a path to a config.json
        cfg = ckpt.read_json(str(config))
        return cfg["_class_name"], cfg, None
    stem = path.rsplit(".", 1)[0]
    for candidate in (stem + ".json", _join(os.path.dirname(path) or ".", "config.json")):
        if ckpt.exists(candidate):
            cfg = ckpt.read_json(candidate)
            if "_class_name" in cfg:
                return cfg["_class_name"], cfg, None
    if path.endswith(ckpt.SAFE_SUFFIXES):
        meta = ckpt.safetensors_metadata(path)
        if "config" in meta:
            cfg = json.loads(meta["config"])
            return cfg["_class_name"], cfg, meta.get("name")
    raise FileNotFoundError(
        f"{path}: cannot tell its architecture. Put its diffusers config next to it ({os.path.basename(stem)}.json "
        f"or config.json), save it with Decoder.save_file (config in the safetensors header), or pass "
        f"config=<registered name, config dict or config.json path>"
    )


def _load_file(path: str, config, device, dtype) -> Decoder:
    class_name, cfg, saved_name = _file_config(path, config)
    model = build_model(class_name, cfg)
    ckpt.load_strict(model, ckpt.read_state_dict(path), path)
    return _finish(model, saved_name or path, device, dtype)


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~"))


def _load_hub(repo_id: str, subfolder, device, dtype) -> Decoder:
    import json

    from huggingface_hub import hf_hub_download

    with open(hf_hub_download(repo_id, "config.json", subfolder=subfolder)) as f:
        class_name = json.load(f)["_class_name"]
    model = model_class(class_name).from_pretrained(repo_id, subfolder=subfolder, use_safetensors=True)
    return _finish(model, repo_id + (f"/{subfolder}" if subfolder else ""), device, dtype)


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
      - a registered name (`available()`): built from its config with random weights (fixed seed);
        registered names win over same-named directories (write `./taesd` for a directory);
      - a local or fsspec (`s3://...`) directory in diffusers `save_pretrained` layout, e.g. a saved
        AutoencoderKL, or a saved pipeline with `subfolder="vae"`;
      - a `.safetensors` file (or `.pt`/`.pth`, read with `weights_only=True`) whose config is
        `config=`, `<stem>.json` or `config.json` beside it, or the file's own header;
      - a Hugging Face model id (diffusers `from_pretrained`; safetensors only).
    device: defaults to CUDA when available, else CPU. dtype: defaults to float32; float16 on a
    `force_upcast` VAE (SDXL, SVD) runs in float32, as diffusers does.
    """
    s = os.fspath(name_or_path)
    if s in SPECS and subfolder is None:
        return build(s, device=device, dtype=dtype)
    local = "://" not in s
    target = _join(s, subfolder) if subfolder else s
    if (local and os.path.isdir(target)) or (not local and ckpt.exists(_join(target, "config.json"))):
        return _load_dir(target, None, device, dtype)
    if s.endswith(ckpt.SAFE_SUFFIXES + ckpt.PICKLE_SUFFIXES):
        if not ckpt.exists(s):
            raise FileNotFoundError(f"checkpoint not found: {s}")
        return _load_file(s, config, device, dtype)
    if local and not os.path.exists(s) and _looks_like_hub_id(s):
        try:
            return _load_hub(s, subfolder, device, dtype)
        except Exception as e:  # offline, missing repo, no safetensors: say what was tried
            raise ValueError(
                f"cannot load decoder {s!r}: no such local path, and loading it as a Hugging Face id failed: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
    raise ValueError(
        f"cannot load decoder {s!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        + f": not a registered name {available()}, not a directory with config.json, not a "
        f".safetensors/.pt file, not a Hugging Face id"
    )
