"""Opening output storage through fsspec, retrying what a storage outage breaks, atomic writes.

Credentials are resolved here, in the process that opens the storage, from the environment
variables that the spec names; they are never passed between processes or written anywhere.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.config import StorageConfig
from pipelines.errors import ConfigError, OutputError

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
        import botocore.exceptions as boto

        if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectionClosedError, boto.ReadTimeoutError,
                            boto.ConnectTimeoutError)):
            return True
    except ImportError:
        pass
    try:
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


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old or the new content, never a torn file.

    An object store PUT is atomic already; on a local disk we write a temporary file and rename.
    """
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json(fs, path: str, obj: Any) -> None:
    write_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(fs, path: str) -> Any:
    return json.loads(fs.cat_file(path))
