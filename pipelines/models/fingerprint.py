"""What weights a model or decoder reference means now, as a short fingerprint for the job identity.

A reference names weights only indirectly: a Hugging Face id without a revision moves when its
repository does, a directory's files can be replaced, a checkpoint rewritten. A resume that mixed
the old and the new weights would write an output no single run could, so the identity holds:

  built-in (tiny, registered decoders)   the name and its code version: weights come from code
  a directory or file (local or fsspec)  sha256 over every file's relative path and content hash
  a Hugging Face id                      the commit sha it resolves to (hub, else the local cache)

Local file hashes are cached by (path, size, mtime) under LATENTMILL_CACHE, so a rerun does not
read gigabytes of weights again; remote files use the store's checksum (ETag) when it has one.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

import fsspec

from decoders.references import is_path as is_path_reference
from decoders.registry import lookup
from pipelines.errors import ConfigError
from pipelines.models.loading import TINY_REFERENCE, TINY_VERSION, cache_dir, remote_version
from pipelines.models.random_models import RANDOM_VERSION, is_random_model

CHUNK = 8 << 20


def model_fingerprint(reference: str) -> dict:
    if reference == TINY_REFERENCE:
        return {"builtin": TINY_VERSION}
    if is_random_model(reference):
        return {"builtin": reference, "version": RANDOM_VERSION}
    if is_path_reference(reference):
        return {"files": files_digest(reference)}
    return {"hub": reference, "revision": hub_revision(reference, "model.reference")}


def decoder_fingerprint(decoder: str) -> dict:
    """`sdxl-vae` is the model's own VAE (covered by the model's fingerprint); a registered name
    means its published repository; a random build comes from code."""
    if decoder in ("sdxl-vae", "svd-vae"):  # in a job spec: the model's own (image or video) VAE
        return {"model_vae": True}
    entry = lookup(decoder)
    if entry is not None and entry.weights is None:
        return {"builtin": decoder}
    if entry is not None:
        return {"hub": entry.weights.repo_id, "revision": hub_revision(entry.weights.repo_id, "decoder")}
    if is_path_reference(decoder):
        return {"files": files_digest(decoder)}
    return {"hub": decoder, "revision": hub_revision(decoder, "decoder")}


def files_digest(reference: str) -> str:
    """sha256 over (relative path, content hash) of every file under `reference` (or of the file)."""
    fs, root = fsspec.core.url_to_fs(os.path.expanduser(reference.removeprefix("file://")))
    root = root.rstrip("/")
    if fs.isdir(root):
        entries = fs.find(root, detail=True)
    else:
        entries = {root: fs.info(root)}
    cache = _HashCache()
    h = hashlib.sha256()
    for path in sorted(entries):
        info = entries[path]
        relative = posixpath.relpath(path, root) if path != root else posixpath.basename(root)
        h.update(json.dumps([relative, info.get("size"), _content_hash(fs, path, info, cache)]).encode())
    cache.save()
    return h.hexdigest()


def _content_hash(fs, path: str, info: dict, cache: "_HashCache") -> str:
    version = remote_version(info)
    if version.startswith("etag:"):
        return version
    key = f"{fs.protocol}:{path}:{info.get('size')}:{version}"
    if key in cache.entries:
        return cache.entries[key]
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    cache.entries[key] = digest.hexdigest()
    return cache.entries[key]


class _HashCache:
    def __init__(self):
        self.path = cache_dir() / "file-hashes.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self._size = len(self.entries)

    def save(self) -> None:
        if len(self.entries) == self._size:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)


def hub_revision(repo_id: str, field: str, revision: str = "main") -> str:
    """The commit sha `repo_id` resolves to: asked of the hub, else read from the local HF cache."""
    try:
        # lazy: keeps huggingface_hub out of processes that never call this
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=10).sha
    except Exception:  # offline or unreachable: the local cache says what from_pretrained will load
        pass
    # lazy: keeps huggingface_hub out of processes that never call this
    from huggingface_hub import constants

    ref = os.path.join(constants.HF_HUB_CACHE, f"models--{repo_id.replace('/', '--')}", "refs", revision)
    try:
        with open(ref) as f:
            return f.read().strip()
    except OSError:
        raise ConfigError(
            field, "", detail=f"cannot tell which weights {repo_id!r} means: the hub is unreachable and the "
            "local Hugging Face cache does not hold it"
        ) from None
