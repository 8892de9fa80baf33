"""Build typed dataclasses from parsed YAML, with errors that name the file, line and field.

One small recursive converter instead of a schema library: the dataclasses in pipelines/config.py
and jobs/kinds/ (each kind's spec class and stages section) are the schema, and their __post_init__
checks values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml

from pipelines.errors import ConfigError

# Field metadata of dataclass fields that the spec loader sets and a YAML file may not.
LOADER_SET = {"set_by": "loader"}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """safe_load the text; also return the line (1-based) of every field path, for error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", "", detail=f"{where}: malformed YAML: {problem}") from None
    lines: dict[str, int] = {}

    def walk(n, path):
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)

    if node is not None:
        walk(node, "")
    return data, lines


def build(cls: type, data: Any, path: str = "") -> Any:
    """Convert `data` (YAML-parsed) into an instance of the dataclass `cls`."""
    return _convert(cls, data, path, default=None)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping with fields " + ", ".join(f.name for f in dataclasses.fields(tp) if f.metadata != LOADER_SET)
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, path: str, default: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path, default)
            except ConfigError:
                # A nested dataclass error is more useful than "expected X or Y".
                if dataclasses.is_dataclass(option) and isinstance(value, dict):
                    raise
        raise ConfigError(path, _describe(tp), value)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise ConfigError(path, _describe(tp), value)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, _describe(tp), value)
        (item_type,) = typing.get_args(tp)
        return [_convert(item_type, item, f"{path}[{i}]", None) for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, default)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str) and isinstance(value, bool):
        raise ConfigError(path, _describe(tp), value)
    if not isinstance(value, tp):
        raise ConfigError(path, _describe(tp), value)
    return value


def _convert_dataclass(cls: type, value: Any, path: str, default: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(path, _describe(cls), value)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.metadata != LOADER_SET}
    for key in value:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, "", detail=f"unknown field (known fields: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        child_path = f"{path}.{name}" if path else name
        # A partial mapping updates the field's default instance (stages.decode keeps its own CPUs).
        field_default = getattr(default, name) if isinstance(default, cls) else _field_default(f)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], child_path, field_default)
        elif field_default is dataclasses.MISSING:
            raise ConfigError(child_path, "", detail="required field is missing")
    try:
        instance = dataclasses.replace(default, **kwargs) if isinstance(default, cls) else cls(**kwargs)
    except ConfigError as exc:
        raise (exc.under(path) if path else exc) from None
    return instance


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
