"""What connecting to an existing Ray cluster can go wrong with, said in one line.

Ray 2.60 turns token authentication on by default (`RAY_AUTH_MODE`, token in `RAY_AUTH_TOKEN`,
`RAY_AUTH_TOKEN_PATH` or ~/.ray/auth_token). Measured: a driver without the token gets
`AuthenticationError` at once when RAY_AUTH_MODE=token is set here; with the mode unset it retries
for about 20 s, printing a C++ warning line per second on stderr ("Unauthenticated: ... InvalidAuthToken"),
then raises `ConnectionError` whose cause holds the AuthenticationError's text. Both become one
ConfigError line (exit 2); Ray's own lines on file descriptor 2 are held back while connecting and
shown only if the connection succeeds.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from pipelines.errors import ConfigError

AUTH_MARKERS = ("InvalidAuthToken", "AuthenticationError", "Authentication token", "Unauthenticated")


def auth_error(address: str) -> ConfigError:
    return ConfigError("", "", detail=(
        f"the Ray cluster at {address} uses token authentication and refused this driver (no token, or another "
        "one): set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file holding it) and "
        "RAY_AUTH_MODE=token"))


def _chain_text(exc: BaseException) -> str:
    parts = []
    while exc is not None and len(parts) < 10:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


@contextlib.contextmanager
def connecting(address: str):
    """Around ray.init(address=...): auth and connection failures as one line each."""
    with _held_stderr() as release:
        try:
            yield
        except Exception as exc:
            text = _chain_text(exc)
            if any(marker in text for marker in AUTH_MARKERS):
                raise auth_error(address) from None
            if isinstance(exc, ConnectionError):
                raise ConfigError("--address", "", detail=f"no Ray cluster answers at {address} ({exc}); start one "
                                  "(`ray start --head`) or give its address (--address or RAY_ADDRESS)") from None
            release()
            raise
        release()


@contextlib.contextmanager
def _held_stderr():
    """File descriptor 2 goes to a temporary file; `release()` copies what it got to the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    held = tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    restored = False

    def restore():
        nonlocal restored
        if not restored:
            sys.stderr.flush()
            os.dup2(saved, 2)
            restored = True

    def release():
        restore()
        held.seek(0)
        os.write(2, held.read())

    try:
        yield release
    finally:
        restore()
        os.close(saved)
        held.close()
