"""Opening output storage through fsspec, retrying what a storage outage breaks, atomic and
exclusive writes.

Credentials are resolved here, in the process that opens the storage, from the environment
variables that the spec names; they are never passed between processes or written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.config import StorageConfig
from pipelines.errors import ConfigError, OutputError
from pipelines.tables import table_from_bytes

T = TypeVar("T")
S3_PROTOCOLS = ("s3", "s3a")


class StorageUnavailable(OutputError):
    """Storage stayed unreachable past output.storage.timeout_s."""


def storage_options(url: str, storage: StorageConfig | None) -> dict:
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol in (None, "file", "local"):
        return {"auto_mkdir": True}
    if protocol not in S3_PROTOCOLS:
        return {}
    storage = storage or StorageConfig()
    options: dict[str, Any] = {
        # Other processes (write tasks, a rerun) change these objects: cached listings would serve
        # stale sizes and ETags.
        "use_listings_cache": False,
        # Each call fails within seconds when the endpoint is down; `retrying` owns the longer wait.
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}},
    }
    if storage.endpoint_url:
        options["endpoint_url"] = storage.endpoint_url
    if storage.region:
        options["client_kwargs"] = {"region_name": storage.region}
    if storage.profile:
        options["profile"] = storage.profile
    for option, env_field in (("key", "access_key_id_env"), ("secret", "secret_access_key_env"), ("token", "session_token_env")):
        variable = getattr(storage, env_field)
        if variable is not None:
            if variable not in os.environ:
                raise ConfigError(f"output.storage.{env_field}", "", detail=f"environment variable {variable!r} is not set")
            options[option] = os.environ[variable]
    return options


def open_output(url: str, storage: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(url, **storage_options(url, storage))
    return fs, root.rstrip("/")


def is_transient(exc: BaseException) -> bool:
    """Errors that an outage causes and that go away when storage is back."""
    if isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    try:
        # lazy: keeps botocore out of processes that never call this
        import botocore.exceptions as boto

        if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectionClosedError, boto.ReadTimeoutError,
                            boto.ConnectTimeoutError)):
            return True
    except ImportError:
        pass
    try:
        # lazy: keeps aiohttp out of processes that never call this
        import aiohttp

        return isinstance(exc, aiohttp.ClientError)
    except ImportError:
        return False


def retrying(what: str, operation: Callable[[], T], timeout_s: float) -> T:
    """Run `operation`, retrying transient storage errors with exponential backoff for `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise StorageUnavailable(
                    f"{what}: storage unreachable for {timeout_s:g} s (output.storage.timeout_s); "
                    f"last error: {type(exc).__name__}: {exc}"
                ) from None
            time.sleep(delay)
            delay = min(2 * delay, 8.0)


def check_reachable(url: str, fs: fsspec.AbstractFileSystem, root: str, timeout_s: float) -> None:
    """Fail before any work when the output cannot be written: unreachable, no bucket, no access."""
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol not in S3_PROTOCOLS:
        return
    bucket = root.split("/", 1)[0]
    try:
        retrying(f"reaching {url}", lambda: fs.ls(bucket, refresh=True), timeout_s)
    except FileNotFoundError:
        raise OutputError(f"output.url {url!r}: bucket {bucket!r} does not exist (latentmill does not create buckets)") from None
    except PermissionError as exc:
        raise OutputError(
            f"output.url {url!r}: access denied ({exc}); check the credentials (output.storage, AWS_* variables or profile)"
        ) from None


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _fsync_dir(path: str) -> None:
    """Make a rename or a new file in `path`'s folder durable (a power cut keeps it)."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def streaming_writer(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """A file to stream into `path` that appears complete or not at all.

    Local disk: a temporary name, fsynced, then renamed (and the folder fsynced), so a commit
    marker written after it never points at data still in the page cache. Object stores: an
    exception aborts the (multipart) upload instead of completing it, which is what fsspec's
    close() would do, so a failed write never leaves a truncated object under `path`.
    """
    if _is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.makedirs(os.path.dirname(tmp), exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path)
        return
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()
            f.closed = True  # close() would now commit what was written so far
        else:
            f.close()
        raise
    f.close()


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old or the new content, never a torn file (an object store PUT is atomic;
    on a local disk, a temporary file fsynced and renamed)."""
    if _is_local(fs):
        with streaming_writer(fs, path) as f:
            f.write(data)
    else:
        fs.pipe_file(path, data)


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist; False when it does.

    Local disk: O_CREAT | O_EXCL. S3: a conditional PUT (If-None-Match: *). Other stores have no
    conditional create: write when absent, then read back, which narrows but cannot close the race.
    """
    if _is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if `path` exists; the content is complete when it appears
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(path)
        return True
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in S3_PROTOCOLS:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                return False
            raise
    else:
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    # Read back: a store (or a test server) without an atomic conditional write may let two
    # writers through; the later one wins the content and the earlier one sees it is not its own.
    time.sleep(0.2)
    return fs.cat_file(path) == data


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as the strings "inf", "-inf", "nan": valid JSON (json.dumps
    would write Infinity and NaN, which strict parsers refuse). PSNR of identical images is inf."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(fs, path: str, obj: Any) -> None:
    write_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(fs, path: str) -> Any:
    return json.loads(fs.cat_file(path))


def read_table(fs, path: str, columns=None):
    """A Parquet file as a pyarrow Table (fetched as bytes: see pipelines/tables.py)."""
    return table_from_bytes(fs.cat_file(path), columns)
