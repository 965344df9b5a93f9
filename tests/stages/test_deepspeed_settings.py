"""What the trainers write into, or refuse in, a DeepSpeed config (the DeepSpeed run itself needs a GPU)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cascade_rl.stages.mpo import MPOConfig
from cascade_rl.stages.sft import SFTConfig
from cascade_rl.stages.training import configure_deepspeed, deepspeed_fields

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed"


def shipped(name: str) -> dict:
    return json.loads((RECIPES / name).read_text())


@pytest.mark.parametrize("config_class", [MPOConfig, SFTConfig])
def test_zero2_takes_the_trainer_settings(config_class):
    config = config_class(model_path="m", per_device_batch=4, max_grad_norm=0.5, **_data(config_class))
    assert deepspeed_fields(shipped("zero2.json"), config) == {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.5,
    }


def test_unsupported_settings_are_refused_together_with_the_way_out():
    config = MPOConfig(model_path="m", pairs="p.jsonl", grad_accum=4, save_steps=100)
    with pytest.raises(ValueError) as err:
        deepspeed_fields(shipped("zero3.json"), config)
    message = str(err.value)
    assert "ZeRO-3 (use recipes/deepspeed/zero2.json)" in message
    assert "grad_accum=4 (set grad_accum=1" in message and "save_steps=100 (set save_steps=0)" in message


def test_a_conflicting_explicit_value_is_named():
    config = MPOConfig(model_path="m", pairs="p.jsonl", per_device_batch=2)
    with pytest.raises(
        ValueError, match="sets train_micro_batch_size_per_gpu=8, the trainer config 2: set it to auto"
    ):
        deepspeed_fields({**shipped("zero2.json"), "train_micro_batch_size_per_gpu": 8}, config)


def test_configure_writes_into_the_plugin_config_and_ignores_plain_runs():
    ds_config = shipped("zero2.json")
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config)))
    configure_deepspeed(accelerator, MPOConfig(model_path="m", pairs="p.jsonl", per_device_batch=3))
    assert ds_config["train_micro_batch_size_per_gpu"] == 3 and ds_config["zero_optimization"]["stage"] == 2
    plain = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None))
    configure_deepspeed(plain, MPOConfig(model_path="m", pairs="p.jsonl", grad_accum=4))  # no DeepSpeed: no limits


def _data(config_class) -> dict:
    return {"pairs": "p.jsonl"} if config_class is MPOConfig else {"data": "d.jsonl"}
