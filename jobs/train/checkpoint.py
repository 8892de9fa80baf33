"""The checkpoint format of `kind: train-decoder`, shared by the driver (which checks an existing
checkpoint before training) and the workers (which write and resume from it): the file names, the
decoder identity a checkpoint must match, and copying a local folder to any fsspec URL."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile

from pipelines.sinks.storage import open_output

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
DECODER_DIR = "decoder"


def public_config(config: dict) -> dict:
    """A decoder config without diffusers' bookkeeping (`_use_default_values`, `_class_name`, ...):
    `_use_default_values` is a set, listed in another order by every process (hash randomisation),
    so a rerun's driver would find its own checkpoints "of another decoder"."""
    return {k: v for k, v in json.loads(json.dumps(config, default=sorted)).items() if not k.startswith("_")}


def same_decoder(saved: dict, identity: dict) -> bool:
    """Whether a checkpoint's decoder identity is `identity` (checkpoints written before the
    bookkeeping was left out still hold it)."""
    return saved["class"] == identity["class"] and public_config(saved["config"]) == public_config(identity["config"])


def write_tree(local_dir: str, url: str, storage) -> None:
    """Copy a local directory's files to `url` (any fsspec URL)."""
    fs, root = open_output(url, storage)
    for name in sorted(os.listdir(local_dir)):
        with open(os.path.join(local_dir, name), "rb") as src, fs.open(posixpath.join(root, name), "wb") as dst:
            dst.write(src.read())


def temporary_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="latentmill-train-")
