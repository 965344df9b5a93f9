"""Configs: frozen dataclasses hold every default; YAML files and dotted `key=value` overrides fill them.

An unknown key is an error that lists the valid keys; values are converted to the field's type (a `Literal[...]`
field takes one of its choices); each dataclass's `__post_init__` refuses bad combinations with the reason.

A partial section fills in the field's own default, not the section class's: with
`optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, lr_schedule="constant"))`, the YAML
`optim: {lr: 2.0e-4}` keeps the constant schedule.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
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
    with open(path, encoding="utf-8") as f:  # recipes may hold non-ASCII text (system prompts)
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


def from_dict(cls: type[T], data: dict, where: str = "", base: T | None = None) -> T:
    """Recursively build dataclass `cls` from plain data; unknown keys raise ConfigError naming the valid ones.

    base: an instance whose values fill the keys `data` leaves out (a section's default); else the class defaults.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        section = f" in {where[:-1]}" if where else ""
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        guess = f"did you mean '{where}{close[0]}'? " if close else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; {guess}valid keys{section}: {', '.join(names)}")
    kwargs = {
        name: _convert(hints[name], value, f"{where}{name}", _section_base(cls, name, base))
        for name, value in data.items()
    }
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where[:-1] or cls.__name__}: {err}") from err


def _section_base(cls: type, name: str, base: Any) -> Any:
    """The value a partial section `name` of `cls` fills in: the enclosing base's, else the field's default."""
    if base is not None:
        return getattr(base, name)
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def _convert(hint: Any, value: Any, where: str, base: Any = None) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(hint, value, where + ".", base if isinstance(base, hint) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where, base)
    if origin is typing.Literal:
        if not is_choice(value, args):
            raise ConfigError(choice_error(where, value, args))
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if hint is float and not isinstance(value, bool):
        return _to_float(value, where)
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}; write {_WRITE[hint]}")
    return value


_WRITE = {
    int: "a whole number (e.g. 4)",
    bool: "true or false",
    str: "text (quote it if YAML reads it as another type)",
}


def is_choice(value: Any, choices: tuple) -> bool:
    """Whether `value` is one of a Literal's `choices` (type and value: True is not 1)."""
    return any(type(value) is type(choice) and value == choice for choice in choices)


def choice_error(where: str, value: Any, choices: tuple) -> str:
    return f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}"


def check_choices(config: Any) -> None:
    """Refuse a `Literal[...]`-typed field of dataclass instance `config` holding a value outside its choices (the
    check `from_dict` makes, for configs built in Python); call it first in `__post_init__`."""
    for name, choices in _literal_fields(type(config)):
        value = getattr(config, name)
        if not is_choice(value, choices):
            raise ValueError(choice_error(name, value, choices))


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    """(field name, choices) of every field of `cls` typed `Literal[...]` (or `Literal[...] | None`, None allowed)."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
            literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
            if literal is not None:
                out.append((name, (*typing.get_args(literal), None)))
        elif typing.get_origin(hint) is typing.Literal:
            out.append((name, args))
    return tuple(out)


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
