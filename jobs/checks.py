"""Checks of spec fields that need the outside world: URL protocols, model folders, decoders.

The spec loader runs the ones every kind shares; each kind (jobs/kinds/) runs those of its own fields.
"""

from __future__ import annotations

import fsspec

import decoders
from decoders import references
from decoders.registry import unknown_name_help
from pipelines.config import MODEL_VAE
from pipelines.errors import ConfigError
from pipelines.models.loading import TINY_REFERENCE, VAE_CLASSES, directory_class
from pipelines.models.random_models import RANDOM_MODELS


def check_protocol(url: str, path: str) -> None:
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol is None:
        return
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        known = ", ".join(sorted(p for p in fsspec.available_protocols() if len(p) > 1)[:20])
        raise ConfigError(path, "", detail=f"unknown protocol {protocol!r} in {url!r} ({exc}); known include: {known}") from None


def check_model(reference: str, family: str, vae_only: bool = False) -> None:
    """`family`: the job's model family; a random-weights model must be of it. `vae_only`: the job
    uses nothing of the model but its VAE, so a bare autoencoder directory (a teacher) will do."""
    kind = references.kind_of(reference, builtins=(TINY_REFERENCE, *RANDOM_MODELS))
    if kind == "builtin" and reference in RANDOM_MODELS:
        _check_random_family(reference, family)
    if kind == "path":
        _check_model_dir(reference, vae_only)
    elif kind is None:
        raise ConfigError(
            "model.reference",
            "",
            detail=f"{reference!r} is neither 'tiny', {' or '.join(RANDOM_MODELS)} (random weights), a Hugging Face "
            "id (org/name) nor an existing directory",
        )


def _check_random_family(reference: str, family: str) -> None:
    """random:sdxl makes images and random:svd-xt clips: each only in its own kind of job."""
    if RANDOM_MODELS[reference].family != family:
        fitting = [name for name, m in RANDOM_MODELS.items() if m.family == family]
        raise ConfigError("model.reference", "", detail=(
            f"{reference!r} is a {RANDOM_MODELS[reference].family!r} model; this job needs a {family!r} model "
            f"({', '.join(fitting)} for random weights)"))


def _check_model_dir(reference: str, vae_only: bool) -> None:
    fs, root = fsspec.core.url_to_fs(references.local_path(reference))
    if not fs.isdir(root):
        raise ConfigError("model.reference", "", detail=f"model directory {reference!r} does not exist")
    if fs.exists(f"{root.rstrip('/')}/model_index.json"):
        return
    found = directory_class(reference)
    if found in VAE_CLASSES and vae_only:
        return
    if found in VAE_CLASSES:
        raise ConfigError("model.reference", "", detail=(
            f"{reference!r} is a bare {found} directory (a VAE alone); this job needs a whole pipeline "
            "(model_index.json); a VAE alone serves encode, redecode and train-decoder"))
    says = f"; its config.json names {found!r}" if found else ""
    raise ConfigError("model.reference", "", detail=(
        f"{reference!r} is neither a diffusers pipeline directory (model_index.json) nor an "
        f"{' or '.join(VAE_CLASSES)} directory (config.json with its _class_name){says}"))


def check_decoder(decoder: str, model_family: str, own: str, video: bool = False) -> None:
    """Before any actor starts: the decoder exists, decodes this job's kind of latents (images or
    clips) and the model's latent space, and its weights are here. `own` names the model's own VAE."""
    if decoder == own:
        return
    kind = references.kind_of(decoder, builtins=decoders.available())
    entry = decoders.lookup(decoder) if kind == "builtin" else None
    if entry is not None and entry.is_video != video:
        found, wanted = ("an image", "a video") if video else ("a video", "an image")
        fitting = ", ".join(n for n in decoders.available() if decoders.lookup(n).is_video == video)
        raise ConfigError("decoder", "", detail=(
            f"{decoder!r} is {found} decoder; {wanted} job needs {wanted} decoder: {own} (the model's own VAE), "
            f"one of {fitting}, or a checkpoint of one"))
    try:
        if kind in ("builtin", "hub"):
            decoders.check_latent_space(decoder, model_family)
            decoders.fetch_weights(decoder)
    except (decoders.LatentSpaceMismatch, decoders.WeightsUnavailable) as exc:
        raise ConfigError("decoder", "", detail=str(exc)) from None
    if kind == "path":
        fs, root = fsspec.core.url_to_fs(references.local_path(decoder))
        if not fs.exists(root):
            raise ConfigError("decoder", "", detail=f"decoder checkpoint {decoder!r} does not exist")
    elif kind is None:
        detail = f"unknown decoder {decoder!r}: {unknown_name_help(decoder)}; or 'sdxl-vae', the model's own VAE"
        raise ConfigError("decoder", "", detail=detail)


def check_tiling_support(decoder: str) -> None:
    """Tiling is a spec error, not an actor crash, for a registered decoder that cannot tile."""
    entry = None if decoder == MODEL_VAE else decoders.lookup(decoder)
    if entry is not None and not entry.supports_tiling:
        tiling = ", ".join(n for n in decoders.available() if n != MODEL_VAE and decoders.lookup(n).supports_tiling)
        raise ConfigError("decoder_tiling", "", detail=(
            f"decoder {decoder!r} cannot decode in tiles; set decoder_tiling: false or use one that can: "
            f"sdxl-vae (the model's VAE), {tiling}"))
