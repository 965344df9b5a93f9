"""The engine factory: the HF engine over a given model shares it, over a checkpoint loads it in eval mode; the vLLM
engine fails on a missing vLLM before reading anything; an unknown kind is refused with the valid ones."""

import pytest
from rollout.test_vllm_support import installed

from cascade_rl.models import io as models_io
from cascade_rl.rollout import HFEngine
from cascade_rl.rollout.factory import make_engine
from cascade_rl.rollout.vllm_support import EngineUnavailable


def test_hf_engine_shares_a_given_model_and_loads_a_checkpoint_in_eval_mode(tiny_internvl, tiny_checkpoint):
    model, processor = tiny_internvl
    shared = make_engine("hf", model=model, processor=processor, max_tiles=4, batch_size=3)
    assert isinstance(shared, HFEngine) and shared.model is model and shared.batch_size == 3
    loaded = make_engine("hf", str(tiny_checkpoint), max_tiles=4)
    assert loaded.model is not model and not loaded.model.training
    with pytest.raises(ValueError, match="needs that model's processor"):
        make_engine("hf", model=model)


def test_vllm_engine_without_vllm_fails_before_reading_the_checkpoint(monkeypatch, tmp_path):
    installed(monkeypatch, {})

    def never(*args, **kwargs):
        raise AssertionError("the processor was loaded before the vLLM check")

    monkeypatch.setattr(models_io, "load_processor", never)
    with pytest.raises(EngineUnavailable, match="not installed"):
        make_engine("vllm", str(tmp_path))


def test_an_unknown_kind_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="engine must be one of 'hf', 'vllm', 'server', 'hf-server'; got 'tgi'"):
        make_engine("tgi", "m")
