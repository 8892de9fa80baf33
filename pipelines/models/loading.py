"""Resolve a model reference to something diffusers' from_pretrained loads, and load it.

Every reference ends up on the same code path: the built-in tiny model is saved once to a local
cache directory and loaded from there, a remote fsspec directory is copied to the cache first, and
a Hugging Face id goes to from_pretrained as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

import decoders
from decoders import references
from pipelines.models.random_models import RANDOM_MODELS, RANDOM_SVD_XT, is_random_model

TINY_REFERENCE = "tiny"
TINY_VERSION = "tiny-sdxl-v1"

SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


# A model directory that is one autoencoder (e.g. a `train-vae` teacher), not a whole pipeline.
VAE_CLASSES = ("AutoencoderKL",)


def load_model_vae(reference: str, device: str, dtype: str, tiny=None):
    """The model's own VAE as a `decoders.Decoder`: built for a random model, the directory itself
    for a bare autoencoder directory (`is_vae_dir`), else the pipeline's `vae` folder.
    `tiny`: the function that saves the family's built-in tiny model (default: tiny SDXL)."""
    if is_random_model(reference):
        # lazy: keeps torch out of processes that never call this
        from pipelines.models.random_build import random_vae

        return random_vae(reference, device, torch_dtype(dtype))
    resolved = resolve_reference(reference, tiny)
    subfolder = None if is_vae_dir(resolved) else "vae"
    return decoders.load(resolved, subfolder=subfolder, device=device, dtype=torch_dtype(dtype))


def directory_class(path: str) -> str | None:
    """The `_class_name` in a local or fsspec directory's config.json; None without one."""
    fs, root = fsspec.core.url_to_fs(references.local_path(path))
    try:
        config = json.loads(fs.cat_file(f"{root.rstrip('/')}/config.json"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        return None
    return config.get("_class_name") if isinstance(config, dict) else None


def is_vae_dir(path: str) -> bool:
    """A save_pretrained directory of one autoencoder (config.json of a VAE class), not a pipeline."""
    return references.is_path(path) and directory_class(path) in VAE_CLASSES


def cache_dir() -> Path:
    return Path(os.environ.get("LATENTMILL_CACHE", Path.home() / ".cache" / "latentmill"))


def resolve_reference(reference: str, tiny=None) -> str:
    """What from_pretrained takes: a local directory, or a Hugging Face id as it is.

    `tiny`: the function that saves the built-in tiny model of the family (default: tiny SDXL).
    """
    kind = references.kind_of(reference, builtins=(TINY_REFERENCE,))
    if kind == "builtin":
        return str((tiny or ensure_tiny_sdxl)())
    if kind == "path" and references.is_url(reference) and not reference.startswith("file://"):
        return str(_copy_remote_dir(reference))
    if kind == "path":
        return references.local_path(reference)
    return reference  # a Hugging Face id


def ensure_tiny_sdxl() -> Path:
    # lazy: keeps torch out of processes that never call this
    from pipelines.models.tiny_sdxl import build_tiny_sdxl_pipeline

    return ensure_saved(TINY_VERSION, build_tiny_sdxl_pipeline)


def ensure_saved(version: str, build) -> Path:
    """Save the pipeline `build()` makes once per machine under `version`; concurrent actors race
    safely via rename."""
    target = cache_dir() / "models" / version
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    build().save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_remote_dir(url: str) -> Path:
    # The cache is keyed by the directory's current listing (names, sizes, ETags or mtimes): new
    # files under the same URL are copied again instead of served from a stale cache.
    fs, root = fsspec.core.url_to_fs(url)
    listing = sorted((path, info.get("size"), remote_version(info)) for path, info in fs.find(root, detail=True).items())
    version = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    target = cache_dir() / "remote" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{version}"
    if (target / "model_index.json").exists() or (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def remote_version(info: dict) -> str:
    """What changes when a stored file does: its ETag where the store has one, else its mtime."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return "etag:" + etag.strip('"')
    return f"mtime:{info.get('mtime') or info.get('LastModified') or info.get('created')}"


def torch_dtype(name: str):
    # lazy: keeps torch out of processes that never call this
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_denoise_pipeline(reference: str, dtype: str, scheduler: str, device: str = "cpu"):
    """An SDXL pipeline without its VAE: the decode stage owns decoding, on its own devices.
    `random:sdxl` (and `random:sdxl-tiny`) is built on `device` directly; other references load on
    the CPU (move them)."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    import diffusers
    import transformers

    # Loading bars in every actor's log would bury the job's own progress.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if is_random_model(reference) and RANDOM_MODELS[reference].family == "sdxl":  # random:sdxl[-tiny]
        # lazy: keeps torch out of processes that never call this
        from pipelines.models.random_build import build_random_sdxl

        pipe = build_random_sdxl(device, torch_dtype(dtype), with_vae=False, reference=reference)
    else:
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            resolve_reference(reference), vae=None, dtype=torch_dtype(dtype)
        )
    if scheduler != "default":
        scheduler_cls = getattr(diffusers, SCHEDULERS[scheduler])
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_tiny_svd() -> Path:
    # lazy: keeps torch out of processes that never call this
    from pipelines.models.tiny_svd import TINY_SVD_VERSION, build_tiny_svd_pipeline

    return ensure_saved(TINY_SVD_VERSION, build_tiny_svd_pipeline)


def load_video_pipeline(reference: str, dtype: str, device: str = "cpu"):
    """A StableVideoDiffusionPipeline with its image encoder, UNet, scheduler and VAE: the VAE's
    encoder makes the conditioning latents; decoding is the decode stage's, on its own devices.
    `random:svd-xt` is built on `device` directly; other references load on the CPU."""
    # lazy: keeps diffusers, transformers out of processes that never call this
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if reference == RANDOM_SVD_XT:
        # lazy: keeps torch out of processes that never call this
        from pipelines.models.random_build import build_random_svd_xt

        pipe = build_random_svd_xt(device, torch_dtype(dtype))
    else:
        pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(
            resolve_reference(reference, tiny=ensure_tiny_svd), dtype=torch_dtype(dtype)
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
