"""What the trainers write into, or refuse in, a DeepSpeed config (test_deepspeed.py runs DeepSpeed itself)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cascade_rl.stages.mpo import MPOConfig
from cascade_rl.stages.sft import SFTConfig
from cascade_rl.train.optim import OptimConfig
from cascade_rl.train.setup import configure_deepspeed, deepspeed_fields

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed"


def shipped(name: str) -> dict:
    return json.loads((RECIPES / name).read_text())


@pytest.mark.parametrize("config_class", [MPOConfig, SFTConfig])
def test_zero2_takes_the_trainer_settings(config_class):
    data = {"pairs": "p.jsonl"} if config_class is MPOConfig else {"data": "d.jsonl"}
    optim = OptimConfig(per_device_batch=4, grad_accum=3, max_grad_norm=0.5)
    config = config_class(model_path="m", optim=optim, **data)
    assert deepspeed_fields(shipped("zero2.json"), config.optim, world=8) == {
        "train_batch_size": 4 * 3 * 8,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 3,
        "gradient_clipping": 0.5,
    }


def test_a_conflicting_explicit_value_is_named():
    config = MPOConfig(model_path="m", pairs="p.jsonl", optim=OptimConfig(per_device_batch=2))
    with pytest.raises(ValueError, match="sets train_micro_batch_size_per_gpu=8, the trainer config 2: set it to"):
        deepspeed_fields({**shipped("zero2.json"), "train_micro_batch_size_per_gpu": 8}, config.optim, world=1)


def test_configure_writes_into_the_plugin_config_and_ignores_plain_runs():
    ds_config = shipped("zero2.json")
    plugin = SimpleNamespace(deepspeed_config=ds_config)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=2)
    configure_deepspeed(
        accelerator, MPOConfig(model_path="m", pairs="p.jsonl", optim=OptimConfig(per_device_batch=3)).optim
    )
    assert ds_config["train_micro_batch_size_per_gpu"] == 3 and ds_config["train_batch_size"] == 6
    assert ds_config["zero_optimization"]["stage"] == 2
    plain = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None), num_processes=1)
    configure_deepspeed(
        plain, MPOConfig(model_path="m", pairs="p.jsonl", save_steps=5).optim
    )  # no DeepSpeed: no limits


def test_zero3_mpo_refuses_lora_and_another_reference():
    from cascade_rl.train.zero3 import check_zero3_run

    check_zero3_run(MPOConfig(model_path="m", pairs="pairs.jsonl"))
    with pytest.raises(ValueError, match="LoRA under ZeRO-3"):
        check_zero3_run(MPOConfig(model_path="m", pairs="pairs.jsonl", lora_rank=4))
    with pytest.raises(ValueError, match="reference is the starting policy"):
        check_zero3_run(MPOConfig(model_path="m", pairs="pairs.jsonl", reference="live"))


def test_sft_refuses_zero3():
    config = SFTConfig(model_path="m", data="d.jsonl")
    with pytest.raises(ValueError, match="does not support ZeRO-3 yet: use recipes/deepspeed/zero2.json"):
        deepspeed_fields(shipped("zero3.json"), config.optim, world=2)
    assert deepspeed_fields(shipped("zero3.json"), config.optim, world=2, zero3=True)["train_batch_size"] == 2


def test_zero3_gspo_refuses_the_hf_test_double_server(tiny_checkpoint, tmp_path):
    from stages.conftest import gspo_config

    from cascade_rl.train.zero3 import check_zero3_gspo

    check_zero3_gspo(gspo_config(tiny_checkpoint, tmp_path))
    check_zero3_gspo(gspo_config(tiny_checkpoint, tmp_path, kl_coef=0.1))  # a partitioned reference of its own
    with pytest.raises(ValueError, match="engine=hf-server under ZeRO-3 .* use engine=server"):
        check_zero3_gspo(gspo_config(tiny_checkpoint, tmp_path, engine="hf-server"))
    check_zero3_gspo(gspo_config(tiny_checkpoint, tmp_path, engine="server"))  # vLLM servers: rank 0 pushes
