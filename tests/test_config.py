"""Config loading: YAML + dotted overrides into frozen dataclasses; unknown keys and bad values are refused."""

from dataclasses import dataclass, field, replace
from typing import Literal

import pytest

from cascade_rl.config import ConfigError, check_choices, load_config


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
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'inner.tempreature'; did you mean 'inner.temperature'\? valid keys in inner: n, temper",
    ):
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


@dataclass(frozen=True)
class Choosy:
    engine: Literal["hf", "vllm"] = "hf"
    level: Literal[0, 1] = 0
    backup: Literal["disk", "s3"] | None = None
    inner: Inner = field(default_factory=lambda: Inner(n=32))  # a section whose defaults differ from Inner's

    def __post_init__(self):
        check_choices(self)


def test_literal_fields_take_one_of_their_choices_from_yaml_and_from_python():
    assert load_config(Choosy, {}, ["engine=vllm", "level=1", "backup=s3"]) == Choosy("vllm", 1, "s3")
    assert load_config(Choosy, {"backup": None}).backup is None
    message = "engine must be one of 'hf', 'vllm'; got 'bogus'"
    with pytest.raises(ConfigError, match=f"^{message}$"):  # the loader names the key, the value and the choices
        load_config(Choosy, {}, ["engine=bogus"])
    with pytest.raises(ValueError, match=f"^{message}$"):  # built in Python: the same message
        Choosy(engine="bogus")
    with pytest.raises(ConfigError, match="level must be one of 0, 1; got True"):  # True == 1, but is no choice
        load_config(Choosy, {"level": True})
    with pytest.raises(ValueError, match="backup must be one of 'disk', 's3', None; got 'tape'"):
        Choosy(backup="tape")


def test_a_literal_in_a_nested_section_is_named_by_its_dotted_key():
    @dataclass(frozen=True)
    class Holder:
        choosy: Choosy = field(default_factory=Choosy)

    with pytest.raises(ConfigError, match="^choosy.engine must be one of 'hf', 'vllm'; got 'tpu'$"):
        load_config(Holder, {}, ["choosy.engine=tpu"])


def test_a_partial_section_keeps_the_fields_own_defaults():
    # Choosy.inner defaults to Inner(n=32), not Inner()'s n=8: setting one key keeps the other at 32.
    assert load_config(Choosy, {}, ["inner.temperature=1.0"]).inner == Inner(n=32, temperature=1.0)
    assert load_config(Choosy, {"inner": {}}).inner == Inner(n=32)
    assert load_config(Outer, {}, ["inner.n=4"]).inner == Inner(n=4, temperature=0.7)


def test_stage_configs_refuse_a_bad_choice_the_same_way_from_yaml_and_python():
    from cascade_rl.stages.gspo import GSPOConfig
    from cascade_rl.stages.mpo import MPOConfig
    from cascade_rl.train.optim import OptimConfig

    required = {"model_path": "m", "prompts": "p"}
    message = "engine must be one of 'hf', 'vllm', 'server', 'hf-server'; got 'bogus'"
    with pytest.raises(ConfigError, match=message):
        load_config(GSPOConfig, {**required, "engine": "bogus"})
    with pytest.raises(ValueError, match=message):
        GSPOConfig(**required, engine="bogus")
    with pytest.raises(ConfigError, match="optim.lr_schedule must be one of 'cosine', 'constant'; got 'linear'"):
        load_config(MPOConfig, {"model_path": "m", "pairs": "p"}, ["optim.lr_schedule=linear"])
    with pytest.raises(ValueError, match="lr_schedule must be one of 'cosine', 'constant'; got 'linear'"):
        OptimConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="vllm.dtype must be one of"):
        load_config(GSPOConfig, required, ["vllm.dtype=fp8"])


def test_each_stage_fills_a_partial_optim_or_sampling_section_from_its_own_defaults():
    from cascade_rl.stages.eval import EVAL_SAMPLING, EvalConfig
    from cascade_rl.stages.gspo import GSPO_OPTIM, GSPO_SAMPLING, GSPOConfig
    from cascade_rl.stages.mpo import MPO_OPTIM, MPOConfig
    from cascade_rl.stages.rollout import ROLLOUT_SAMPLING, RolloutStageConfig

    required = {"model_path": "m", "prompts": "p"}
    gspo = load_config(GSPOConfig, required, ["optim.lr=2e-4", "sampling.max_new_tokens=40"])
    assert gspo.optim == replace(GSPO_OPTIM, lr=2e-4) and gspo.optim.lr_schedule == "constant"
    assert gspo.sampling == replace(GSPO_SAMPLING, max_new_tokens=40) and gspo.sampling.n == 16
    mpo = load_config(MPOConfig, {"model_path": "m", "pairs": "p", "optim": {"grad_accum": 32}})
    assert mpo.optim == replace(MPO_OPTIM, grad_accum=32) and mpo.optim.lr == 2e-7
    assert load_config(RolloutStageConfig, required, ["sampling.n=32"]).sampling == replace(ROLLOUT_SAMPLING, n=32)
    assert load_config(EvalConfig, required).sampling == EVAL_SAMPLING
    assert (EVAL_SAMPLING.n, EVAL_SAMPLING.temperature) == (1, 0.0)
    assert (ROLLOUT_SAMPLING.n, ROLLOUT_SAMPLING.temperature, ROLLOUT_SAMPLING.top_k) == (8, 0.7, 50)


def test_sampling_converts_to_the_engines_params_and_gspo_seeds_each_step():
    from cascade_rl.rollout import SamplingConfig, SamplingParams
    from cascade_rl.stages.gspo import GSPOConfig, GSPOTrainer

    sampling = SamplingConfig(n=4, temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=12, seed=3)
    assert sampling.params() == SamplingParams(0.7, 0.9, 50, 12, seed=3)
    assert sampling.params(seed=11).seed == 11
    trainer = GSPOTrainer.__new__(GSPOTrainer)  # only `sampling(step)` is used: no model is loaded
    trainer.config = load_config(GSPOConfig, {"model_path": "m", "prompts": "p", "seed": 2})
    assert trainer.sampling(5) == SamplingParams(1.0, 1.0, -1, 1024, seed=2 * 1_000_003 + 5)
    with pytest.raises(ConfigError, match="derives step k's sampling seed from seed"):
        load_config(GSPOConfig, {"model_path": "m", "prompts": "p"}, ["sampling.seed=4"])
    with pytest.raises(ConfigError, match="GSPO batches by prompts"):
        load_config(GSPOConfig, {"model_path": "m", "prompts": "p"}, ["optim.grad_accum=2"])


def test_print_config_shows_the_nested_sections(capsys):
    from pathlib import Path

    import yaml

    from cascade_rl.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "cascade.yaml"
    overrides = ["model_path=/m", "data.train=t.jsonl", "data.heldout=h.jsonl", "data.sft=s.jsonl"]
    with pytest.warns(UserWarning, match="clip"):
        assert main(["print-config", str(recipe), *overrides]) == 0
    stages = yaml.safe_load(capsys.readouterr().out)["stages"]
    assert stages["sft"]["optim"]["lr"] == 3e-3 and stages["sft"]["optim"]["lr_schedule"] == "cosine"
    assert stages["gspo"]["optim"]["lr_schedule"] == "constant" and stages["gspo"]["sampling"]["n"] == 8
    assert stages["rollout"]["sampling"]["top_k"] == 50
    assert stages["eval"]["settings"]["sampling"] == {
        "n": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "max_new_tokens": 40,
        "seed": 0,
    }
