"""TOML <-> `Config`: type checks that name the key, dotted `--set` overrides, a dump that loads back."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from .base import need
from .run import Config

__all__ = ["load_config", "dump_config", "config_from_dict", "config_to_dict", "apply_overrides",
           "parse_override"]

_NONE = "none"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple, "none" -> None) a TOML value for `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() == _NONE)):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ValueError(f"{key} must be {names} (or \"none\"); got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        need(value in choices, f"{key} must be one of {list(choices)}; got {value!r}")
        return value
    if origin in (tuple, list):
        need(isinstance(value, (list, tuple)), f"{key} must be a list; got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        need(isinstance(value, dict), f"{key} must be a table; got {value!r}")
        return dict(value)
    if tp is bool:
        need(isinstance(value, bool), f"{key} must be true or false; got {value!r}")
        return value
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        need(ok, f"{key} must be an integer; got {value!r}")
        return value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        need(ok, f"{key} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        need(isinstance(value, str), f"{key} must be a string; got {value!r}")
        return value
    return value


def _section_from_dict(cls: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"[{section}] must be a table of keys; got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in fields]
    if unknown:
        valid = ", ".join(fields) if fields else "(none)"
        raise ValueError(
            f"unknown key {section}.{unknown[0]} in the config; valid keys of [{section}]: {valid}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"[{section}]: {e}") from e


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a `Config` from nested dicts (as TOML parses them); unknown sections/keys are errors."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = [k for k in data if k not in sections]
    if unknown:
        raise ValueError(f"unknown config section [{unknown[0]}]; valid sections: {', '.join(sections)}")
    hints = typing.get_type_hints(Config)
    return Config(**{name: _section_from_dict(hints[name], data.get(name, {}), name) for name in sections})


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as nested plain dicts (None kept as None, tuples as lists)."""
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        names = [s.name for s in dataclasses.fields(section) if s.init]
        out[f.name] = {name: _plain(getattr(section, name)) for name in names}
    return out


# --------------------------------------------------------------------------------------------
# TOML in and out
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-4"` -> (["train", "lr"], 1e-4); the value is a TOML literal, else a plain string."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if len(path) != 2 or not all(path):
        raise ValueError(f"override key {key.strip()!r} must be section.key, e.g. train.lr")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `--set section.key=value` overrides to nested dicts (a copy); checking happens when building."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"cannot set {section}.{key}: [{section}] is not a table")
        table[key] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config (or start from defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from e
    return config_from_dict(apply_overrides(data, list(overrides)))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters (incl. DEL) escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v, key)}" for k, v in value.items())
        return "{" + items + "}"
    raise ValueError(f"cannot write {key} = {value!r} as TOML")


def dump_config(config: Config) -> str:
    """The config as TOML text that `load_config` reads back to an equal `Config`."""
    lines: list[str] = []
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        lines.append(f"[{f.name}]")
        for s in dataclasses.fields(section):
            if not s.init:
                continue
            value = getattr(section, s.name)
            default = s.default if s.default is not dataclasses.MISSING else None
            if value is None:
                # absent = default; an explicit "none" only where the default is something else
                lines.append(f"# {s.name} = (none)" if default is None else f'{s.name} = "{_NONE}"')
            else:
                lines.append(f"{s.name} = {_toml_value(value, f'{f.name}.{s.name}')}")
        lines.append("")
    return "\n".join(lines)
