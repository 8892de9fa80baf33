"""Read a planned sample's data inside a stage: one range read per tar member, or the whole file.

`read_member(sample, ext, storage)` takes the dict of `ImageSample.as_dict()`; `ext` is a member
extension (`png`, `txt`, `latent.npy`, ...) or "image" for the sample's image, whatever its format.
Anything missing or unreadable raises UnreadableSample naming the key, the URL and what was wanted;
`read_members` reads a batch with concurrent requests and can hand such errors back per sample.
"""

from __future__ import annotations

import errno
import os
import stat

import fsspec

from pipelines.config import StorageConfig
from pipelines.errors import LatentmillError
from pipelines.sinks.storage import is_transient, storage_options
from pipelines.sources.images import IMAGE_EXTENSIONS, extension

IMAGE = "image"


class UnreadableSample(LatentmillError):
    """A planned sample's data is missing, truncated or unreadable (bad input, not a pipeline fault)."""


def locate(sample: dict, ext: str) -> tuple[str, int | None, int | None]:
    """(url, start, end) of `ext` of `sample`; start and end are None for a whole file."""
    source, key = sample["source"], sample["key"]
    if source.get("rejected"):
        raise UnreadableSample(f"sample {key}: {source['url']}: {source['rejected']}")
    members = source.get("members")
    if members is None:
        own = extension(source["url"])
        if ext in (IMAGE, own) or (ext in ("jpg", "jpeg") and own in ("jpg", "jpeg")):
            return source["url"], None, None
        raise UnreadableSample(f"sample {key}: {source['url']} is a single .{own} file; it has no .{ext}")
    if ext == IMAGE:
        ext = next((e for e in members if e in IMAGE_EXTENSIONS), None)
        if ext is None:
            raise UnreadableSample(f"sample {key} in {source['url']} has no image member (it has: {', '.join(members)})")
    if ext not in members:
        raise UnreadableSample(f"sample {key} in {source['url']} has no .{ext} member (it has: {', '.join(members)})")
    offset, size = members[ext]
    return source["url"], offset, offset + size


def read_member(sample: dict, ext: str, storage: StorageConfig | None = None) -> bytes:
    result = read_members([sample], ext, storage, return_errors=True)[0]
    if isinstance(result, Exception):
        raise result
    return result


def read_members(
    samples: list[dict], ext: str, storage: StorageConfig | None = None, *, return_errors: bool = False
) -> list[bytes | UnreadableSample]:
    """Each sample's `ext` member, in order. With `return_errors`, an UnreadableSample stands in
    for a sample that could not be read; otherwise the first one is raised."""
    results: list = [None] * len(samples)
    by_protocol: dict[str, list[tuple[int, str, int | None, int | None]]] = {}
    for i, sample in enumerate(samples):
        try:
            url, start, end = locate(sample, ext)
        except UnreadableSample as exc:
            results[i] = exc
            continue
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        problem = local_problem(url) if protocol in ("file", "local") else None
        if problem:
            results[i] = UnreadableSample(f"sample {sample['key']}: {url} {problem}")
            continue
        by_protocol.setdefault(protocol, []).append((i, url, start, end))
    for reads in by_protocol.values():
        fs, _ = fsspec.core.url_to_fs(reads[0][1], **storage_options(reads[0][1], storage))
        paths = [fs._strip_protocol(url) for _, url, _, _ in reads]
        # Concurrent requests on object stores (async filesystems), a loop on local disk.
        data = fs.cat_ranges(paths, [r[2] for r in reads], [r[3] for r in reads], on_error="return")
        for (i, url, start, end), value in zip(reads, data):
            results[i] = _checked(samples[i]["key"], url, ext, start, end, value)
    if not return_errors:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results


def local_problem(url: str) -> str | None:
    """Why a local path is no file to read, or None. Checked before opening: opening a FIFO would
    wait forever for a writer; the rest would fail with less to say."""
    path = fsspec.core.strip_protocol(url)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a symbolic link to a file that does not exist" if os.path.islink(path) else "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device), so it is not read"
    return None


def _checked(key: str, url: str, ext: str, start, end, value) -> bytes | UnreadableSample:
    if isinstance(value, BaseException) and is_transient(value):
        raise value  # storage trouble, not bad data: the stage fails and the pipeline retries it
    if isinstance(value, FileNotFoundError):
        return UnreadableSample(f"sample {key}: {url} does not exist")
    if isinstance(value, BaseException):
        return UnreadableSample(f"sample {key}: reading .{ext} from {url} failed: {type(value).__name__}: {value}")
    if end is not None and len(value) != end - start:
        return UnreadableSample(
            f"sample {key}: {url} is truncated: .{ext} should be {end - start} bytes at offset {start}, got {len(value)}"
        )
    return value
