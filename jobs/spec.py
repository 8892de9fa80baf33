"""The job spec: one YAML file that says what to generate, with what, where and on what resources.

`load_spec` parses it with yaml.safe_load, applies `--set` overrides, builds the kind's typed spec
(jobs/kinds/) and checks what the dataclasses cannot check alone (references to files, decoders and
protocols). Every error names the file, the line where it has one, the field, and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re

import fsspec
import yaml

from decoders import references
from jobs.checks import check_protocol
from jobs.dates import fill_dates
from jobs.kinds import kind_named
from jobs.schema import build, parse_yaml
from pipelines.errors import ConfigError


def load_spec(path: str, overrides: list[str] = (), date: str | None = None):
    """Load, override, fill {date} (`date`, default today UTC) and validate a spec file."""
    return parse_spec(read_spec_text(path), source=path, overrides=overrides, date=date)


def read_spec_text(path: str) -> str:
    try:
        with fsspec.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError("", "", detail=f"{path}: spec file not found") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", "", detail=f"{path}: not valid UTF-8 at byte {exc.start}") from None


def spec_data(text: str, source: str = "<spec>", overrides: list[str] = ()) -> tuple[dict, dict[str, int]]:
    """The parsed spec mapping with `--set` overrides applied, and the line of every field."""
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "", detail=f"{source}: expected a mapping of fields at the top, got {type(data).__name__}")
    overridden: set[str] = set()
    for item in overrides:
        overridden.add(apply_override(data, item))
        _drop_alternatives(data, overridden, item)
    return data, lines


# Fields of which a spec gives exactly one: a `--set` of one replaces the other from the file
# (`--set input.url=...` on a spec with `input: {builtin: 8}`); both in `--set`s is still an error.
EXCLUSIVE_FIELDS = (("input", "url", "builtin"), ("prompts", "inline", "file"), ("notify", "webhook", "webhook_env"))


def _drop_alternatives(data: dict, overridden: set[str], item: str) -> None:
    for section, *names in EXCLUSIVE_FIELDS:
        node = data.get(section)
        if not isinstance(node, dict):
            continue
        given = {f"{section}.{name}" for name in names if node.get(name) is not None}  # null: not given
        for dotted in sorted(given & overridden):
            for other in sorted(given - {dotted}):
                if other in overridden:
                    raise ConfigError("", "", detail=f"--set {item!r}: give exactly one of {dotted} or {other}")
                node.pop(other.split(".", 1)[1])


def parse_spec(text: str, source: str = "<spec>", overrides: list[str] = (), date: str | None = None):
    data, lines = spec_data(text, source, overrides)
    try:
        kind = kind_named(data.get("kind", "generate"))
        run_date = fill_dates(data, date)
        spec = build(kind.spec_class, data)
        if kind.dated:
            spec = dataclasses.replace(spec, run_date=run_date)
        check_references(spec, kind)
    except ConfigError as exc:
        setter = _override_of(exc.path, overrides)
        line = _line_of(exc.path, lines)
        where = f"--set {setter}" if setter else f"{source}:{line}" if line else source
        raise ConfigError("", "", detail=f"{where}: {exc}") from None
    return spec


def _override_of(path: str, overrides: list[str]) -> str | None:
    """The last `--set` that gave the field at `path` (or a field above it) its value: the error is
    in that argument, not at the file line of its parent section."""
    for item in reversed(list(overrides)):
        dotted = item.partition("=")[0].strip()
        if path and (path == dotted or path.startswith((dotted + ".", dotted + "["))):
            return item
    return None


# Fields that may name a local file or folder. A relative one means "from where latentmill runs",
# but only the driver runs there: Ray Train workers run in a directory of their own, and actors of
# a cluster started elsewhere in theirs. So the driver makes them absolute before the job starts.
PATH_FIELDS = ("url", "urls", "file", "reference", "decoder", "init_weights", "train_url", "held_out_url")
NAMED_FIELDS = ("reference", "decoder")  # also take built-in names and Hugging Face ids


def with_absolute_paths(spec):
    """`spec` (or a section of it) with every local relative path absolute, from the current directory."""
    changes = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value):
            section = with_absolute_paths(value)
            if section is not value:
                changes[f.name] = section
        elif f.name in PATH_FIELDS and value is not None:
            absolute = [_absolute(v, f.name) for v in value] if isinstance(value, list) else _absolute(value, f.name)
            if absolute != value:
                changes[f.name] = absolute
    return dataclasses.replace(spec, **changes) if changes else spec


def _absolute(value: str, name: str) -> str:
    if references.is_url(value) or (name in NAMED_FIELDS and not references.is_path(value)):
        return value  # a URL, a built-in name or a Hugging Face id
    return os.path.abspath(references.local_path(value))


def apply_override(data: dict, item: str) -> str:
    """`a.b=value`: the value is YAML, so numbers, booleans and lists keep their types. Returns the dotted field."""
    if "=" not in item:
        raise ConfigError("", "", detail=f"--set {item!r}: expected FIELD=VALUE, e.g. sampler.steps=20")
    dotted, _, value_text = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError("", "", detail=f"--set {item!r}: {dotted!r} is not a dotted field path")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: i + 1]), "", detail=f"--set {item!r}: this field is not a mapping")
        node = child
    node[keys[-1]] = value
    return ".".join(keys)


def check_references(spec, kind) -> None:
    """Checks that need the outside world: files, protocols and decoders (jobs/checks.py)."""
    check_protocol(spec.output.url, "output.url")
    kind.check(spec)


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    # Error paths may end in list indices ("prompts.inline[2]"); the mapping key holds the line.
    path = re.sub(r"\[\d+\]", "", path)
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return None
