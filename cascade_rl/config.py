"""Configs: frozen dataclasses hold every default; YAML files and dotted `key=value` overrides fill them.

An unknown key is an error that lists the valid keys; values are converted to the field's type; each dataclass's
`__post_init__` refuses bad combinations with the reason.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be built: unknown key, wrong type, or a refused combination."""


def load_config(cls: type[T], source: str | Path | dict | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from a YAML file (or a dict) and `key.sub=value` overrides (YAML-parsed values)."""
    data = read_yaml(source) if isinstance(source, (str, Path)) else dict(source or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        set_dotted(data, key.strip(), yaml.safe_load(value))
    return from_dict(cls, data)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    data[parts[-1]] = value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Recursively build dataclass `cls` from plain data; unknown keys raise ConfigError naming the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        section = f" in {where[:-1]}" if where else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; valid keys{section}: {', '.join(names)}")
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where[:-1] or cls.__name__}: {err}") from err


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if hint is float and not isinstance(value, bool):
        return _to_float(value, where)
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _to_float(value: Any, where: str) -> float:
    """YAML 1.1 reads `1e-3` as a string (it wants `1.0e-3`); accept both spellings."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def to_dict(config: Any) -> dict:
    """Plain data (for YAML / JSON) from a config dataclass."""
    return dataclasses.asdict(config)


def dump_yaml(config: Any, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
