"""What a model or decoder reference is: a built-in name, a Hugging Face id, or a local/fsspec path.

One place decides, so the spec checks, the model loaders and `decoders.load` agree on every string.
Order matters: a built-in name wins, then anything that looks like a path (a URL, an absolute or
relative path, or something that exists on disk), then `org/name` as a Hugging Face id.
"""

from __future__ import annotations

import os
import re
from typing import Collection, Literal

Kind = Literal["builtin", "path", "hub"]

# Hugging Face repo ids: `org/name`, letters, digits and `-_.`; neither part starts with a dot.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9_-][\w.-]*$")


def is_url(reference: str) -> bool:
    return "://" in reference


SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# A single-file checkpoint is a path even before it exists ("ckpt/vae.safetensors" is no repo id).
WEIGHTS_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES


def is_path(reference: str) -> bool:
    """A directory, a file or a URL rather than a Hugging Face id."""
    if is_url(reference) or reference.startswith(("/", ".", "~")) or reference.endswith(WEIGHTS_SUFFIXES):
        return True
    return os.path.exists(reference)


def is_hub_id(reference: str) -> bool:
    return not is_path(reference) and bool(HUB_ID.match(reference))


def kind_of(reference: str, builtins: Collection[str] = ()) -> Kind | None:
    """"builtin", "path" or "hub"; None when the string is none of them (e.g. a misspelt name)."""
    if reference in builtins:
        return "builtin"
    if is_path(reference):
        return "path"
    if is_hub_id(reference):
        return "hub"
    return None


def local_path(reference: str) -> str:
    """A local path as the OS takes it: `file://` and `~` resolved."""
    return os.path.expanduser(reference.removeprefix("file://"))
