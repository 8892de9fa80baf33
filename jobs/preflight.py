"""Checks a run makes before it starts Ray, which `--dry-run` makes too: can the output be written?

Only a local output is probed here (object stores are checked by pipelines/sinks/storage.py's
check_reachable, with retries). Permission bits alone do not tell: the driver often runs as root
(containers, CI), for whom a 0555 folder is writable and `os.access` says yes for /proc, yet
/proc refuses every new file (as ENOENT), /sys with EPERM, a read-only mount with EROFS and an
immutable folder (chattr +i) with EPERM. So the nearest existing folder is really written to.
"""

from __future__ import annotations

import errno
import os
import uuid

import fsspec

from pipelines.errors import ConfigError

# Kernel filesystems: nothing a job writes belongs there, whatever a probe would find.
PSEUDO_FILESYSTEMS = ("/proc", "/sys")
# The probe is named like the temporary files of the output's own files (`NAME.tmp-...`,
# pipelines/sinks/storage.py), which a second driver's foreign-data check recognises as ours.
PROBE_PREFIX = "index.json.tmp-probe-"


def check_output_location(url: str, field: str = "output.url") -> None:
    """A ConfigError (exit 2, one line) when the local output `url` cannot be created or written."""
    protocol, path = fsspec.core.split_protocol(url)
    if protocol not in (None, "file", "local"):
        return
    target = os.path.realpath(os.path.abspath(path))
    for pseudo in PSEUDO_FILESYSTEMS:
        if target == pseudo or target.startswith(pseudo + "/"):
            raise ConfigError(field, "", detail=f"{url!r} is under {pseudo}, a kernel filesystem; choose a folder on a disk")
    existing = _nearest_existing(target)
    if not os.path.isdir(existing):
        raise ConfigError(field, "", detail=f"{url!r} cannot be created: {existing} is a file, not a folder")
    reason = _write_probe(existing)
    if reason:
        where = "it" if existing == target else f"its nearest existing folder {existing}"
        raise ConfigError(field, "", detail=f"{url!r} cannot be written: creating a file in {where} fails ({reason}); "
                          "choose a writable folder")


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _write_probe(folder: str) -> str | None:
    """None when a file can be created (and is removed again) in `folder`, else why not."""
    probe = os.path.join(folder, PROBE_PREFIX + uuid.uuid4().hex)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    os.close(fd)
    os.unlink(probe)
    return None
