"""Preset dataclasses ↔ plain YAML data: ``to_plain`` and a strict, typed ``from_plain`` that
names the dotted path of every unknown field and wrong type."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any, Literal

from bevdeploy.errors import ConfigError, excerpt


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    return obj


def from_plain(tp: Any, value: Any, source: str, path: str) -> Any:
    """Build ``tp`` from YAML data, refusing unknown fields and wrong types by dotted path."""
    def fail(msg: str) -> ConfigError:
        return ConfigError(msg, path=source, field=path or "<root>")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in fields(tp) if f.init}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {excerpt(unknown)}; known: {sorted(known)}",
                              path=source, field=path or "<root>")
        kwargs = {k: from_plain(hints[k], v, source, f"{path}.{k}" if path else k)
                  for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise fail(str(exc)) from None
    if tp is Any:
        return _freeze(value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail(f"must be one of {list(typing.get_args(tp))}, got {excerpt(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return from_plain(arg, value, source, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise fail(f"no type of {tp} accepts {excerpt(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise fail(f"expected {len(args)} values, got {len(value)}")
        return tuple(from_plain(a, v, source, f"{path}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected a number, got {excerpt(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {excerpt(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {excerpt(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true/false, got {excerpt(value)}")
        return value
    raise fail(f"unsupported type {tp}")


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value
