"""What several command modules share."""

from __future__ import annotations

from pipelines.config import StorageConfig
from pipelines.errors import ConfigError

CHECKS = ("size", "full")  # --check of run and verify


def add_storage_arguments(parser) -> None:
    """How commands that read an output reach object storage: as output.storage in a spec (names of
    the environment variables that hold the keys, never the keys)."""
    group = parser.add_argument_group("object storage (as output.storage in a spec)")
    group.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    group.add_argument("--region")
    group.add_argument("--profile", help="AWS profile name")
    group.add_argument("--access-key-id-env", metavar="VAR", help="environment variable holding the access key id")
    group.add_argument("--secret-access-key-env", metavar="VAR", help="environment variable holding the secret key")
    group.add_argument("--session-token-env", metavar="VAR", help="environment variable holding a session token")


def storage_config(args, **more) -> StorageConfig:
    """The StorageConfig of add_storage_arguments' options; `more` sets other fields (e.g. timeout_s)."""
    fields = ("endpoint_url", "region", "profile", "access_key_id_env", "secret_access_key_env", "session_token_env")
    try:
        return StorageConfig(**{name: getattr(args, name) for name in fields}, **more)
    except ConfigError as exc:
        raise ConfigError("", "", detail=f"storage options: {exc}") from None
