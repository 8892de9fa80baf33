"""Job kinds: one file each (its spec class, its stages section, its plan and its pipeline); the
engine runs them all alike. `KINDS` is the registry: adding a kind is adding its file and its
line here (jobs/kinds/base.py says what a kind provides)."""

from __future__ import annotations

from jobs.kinds import encode, generate, redecode, train_decoder, train_vae, video
from jobs.kinds.base import JobKind
from pipelines.errors import ConfigError

KINDS: dict[str, JobKind] = {k.name: k for k in (generate.KIND, encode.KIND, redecode.KIND, video.KIND, train_decoder.KIND,
                                               train_vae.KIND)}


def register(kind: JobKind) -> None:
    """Make a kind known to the spec loader and `latentmill run` (tests register toy kinds)."""
    KINDS[kind.name] = kind


def kind_named(name) -> JobKind:
    if name not in KINDS:
        raise ConfigError("kind", "one of " + ", ".join(repr(k) for k in KINDS), name)
    return KINDS[name]


def kind_of(spec) -> JobKind:
    return KINDS[spec.kind]
