"""Which samples the quality monitor checks: decode picks them, the monitor stage scores them."""

from __future__ import annotations

from pipelines.plan import key_fraction


def is_monitored(key: str, fraction: float) -> bool:
    # Salted apart from train-decoder's held-out split, which hashes the same keys.
    return key_fraction(key, "quality-monitor") < fraction
