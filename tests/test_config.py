"""Config loading: YAML + dotted overrides into frozen dataclasses; unknown keys and bad values are refused."""

from dataclasses import dataclass, field

import pytest

from cascade_rl.config import ConfigError, load_config


@dataclass(frozen=True)
class Inner:
    n: int = 8
    temperature: float = 0.7


@dataclass(frozen=True)
class Outer:
    path: str = ""
    inner: Inner = field(default_factory=Inner)
    weights: tuple[float, ...] = (0.8, 0.2, 1.0)
    note: str | None = None

    def __post_init__(self):
        if self.inner.n > 100:
            raise ValueError("inner.n above 100 would not fit in memory")


def test_yaml_then_overrides(tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text("path: a\ninner:\n  n: 4\n")
    config = load_config(Outer, source, ["inner.temperature=1", "weights=[1, 0, 0]", "note=hi"])
    assert config == Outer(path="a", inner=Inner(n=4, temperature=1.0), weights=(1.0, 0.0, 0.0), note="hi")
    assert isinstance(config.inner.temperature, float)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'inner.tempreature'; valid keys in inner: n, temperature"):
        load_config(Outer, {}, ["inner.tempreature=1.0"])
    with pytest.raises(ConfigError, match="valid keys: path, inner, weights, note"):
        load_config(Outer, {"pth": "x"})


def test_wrong_type_and_refused_combination():
    with pytest.raises(ConfigError, match="inner.n: expected int, got 'many'"):
        load_config(Outer, {}, ["inner.n=many"])
    with pytest.raises(ConfigError, match="would not fit in memory"):
        load_config(Outer, {}, ["inner.n=1000"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Outer, {}, ["inner.n"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_exponent_notation_is_a_float():
    assert load_config(Inner, {}, ["temperature=1e-3"]).temperature == 0.001  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ConfigError, match="temperature: expected a number, got 'hot'"):
        load_config(Inner, {}, ["temperature=hot"])
