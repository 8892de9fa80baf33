"""Stage profiles: seconds per item on one GPU, per stage, in one YAML format.

    profiles:
      NAME: {description: ..., unit: image, samples_per_shard: 32,
             stages: {STAGE: {per_item_s: SECONDS, batch_size: N}, ...}}

jobs/bench/profiles.yaml holds published estimates; `latentmill bench gpu` writes measured ones
(jobs/bench/profiles.gpu.yaml). `latentmill bench scheduler --profiles FILE` simulates a cluster
with them, and a job's `stages.auto_profile: {file: FILE, name: NAME}` starts its
`concurrency: auto` split from them (pipelines/autoscale.py) instead of an even one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import fsspec
import yaml

from pipelines.autoscale import StartingTimes
from pipelines.config import StageResources
from pipelines.errors import ConfigError

FORMAT = "`profiles: {NAME: {stages: {STAGE: {per_item_s: SECONDS}}}}`"


@dataclass(frozen=True)
class AutoProfile:
    """`stages.auto_profile`: the profile whose per-item times give `concurrency: auto` its first split."""

    file: str  # a profiles YAML (local path or fsspec URL), e.g. jobs/bench/profiles.gpu.yaml
    name: str  # the profile in it, e.g. sdxl-1024-vae

    def __post_init__(self):
        if not self.file.strip():
            raise ConfigError("file", "a profiles YAML path or URL", self.file)
        if not self.name.strip():
            raise ConfigError("name", "the name of a profile in that file", self.name)


def read_profiles(path: str) -> dict:
    """The `profiles` mapping of a profiles file; a ConfigError (field `file`) when it is not one."""
    try:
        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("file", "", detail=f"{path!r} does not exist; expected a profiles YAML as "
                                             "`latentmill bench gpu` writes (jobs/bench/profiles.gpu.yaml)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("file", "", detail=f"{path!r} cannot be read as YAML ({type(exc).__name__})") from None
    profiles = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError("file", "", detail=f"{path!r} is not a profiles file: expected {FORMAT}")
    return profiles


def auto_stage_names(stages) -> tuple[str, ...]:
    """The stages of a kind's stages section that ask for `concurrency: auto`, in section order."""
    return tuple(f.name for f in dataclasses.fields(stages)
                 if isinstance(getattr(stages, f.name), StageResources) and getattr(stages, f.name).concurrency == "auto")


def starting_times(stages) -> StartingTimes | None:
    """The first split's times that `stages.auto_profile` names (None when it is not set). Errors name
    the field: a missing file, an unknown profile, a profile without a time for every auto stage."""
    profile = getattr(stages, "auto_profile", None)
    if profile is None:
        return None
    try:
        return _times_of(profile, auto_stage_names(stages))
    except ConfigError as exc:
        raise exc.under("stages.auto_profile") from None


def _times_of(profile: AutoProfile, auto: tuple[str, ...]) -> StartingTimes:
    if not auto:
        raise ConfigError("", "", detail="is set, but no stage has `concurrency: auto` (it gives the auto stages' "
                                         "first split); remove it or set a stage's concurrency to auto")
    profiles = read_profiles(profile.file)
    if profile.name not in profiles:
        raise ConfigError("name", "", detail=f"no profile {profile.name!r} in {profile.file}; it has: "
                                             f"{', '.join(map(str, profiles))}")
    entry = profiles[profile.name]
    stages = entry.get("stages") if isinstance(entry, dict) else None
    stages = stages if isinstance(stages, dict) else {}
    times = {name: _seconds(stages.get(name)) for name in auto}
    missing = [name for name, t in times.items() if t is None]
    if missing:
        raise ConfigError("name", "", detail=(
            f"profile {profile.name!r} in {profile.file} has no positive per_item_s for the auto stage(s) "
            f"{', '.join(missing)} (its stages: {', '.join(map(str, stages)) or 'none'}); expected {FORMAT}"))
    return StartingTimes(times, f"profile {profile.name} in {profile.file}")


def _seconds(stage) -> float | None:
    value = stage.get("per_item_s") if isinstance(stage, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)
