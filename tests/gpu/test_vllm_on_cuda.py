"""Colocated vLLM on a GPU (`make gpu-check` where vLLM is installed): bf16 serving, sleep between calls, a weight
update waking the weights first, log-probs near the trainer's."""

import pytest
import torch
from synthetic import shapes_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_colocated_engine_sleeps_wakes_and_takes_new_weights(tmp_path):
    pytest.importorskip("vllm")
    from cascade_rl.models import build_tiny_internvl, save_policy
    from cascade_rl.models.io import load_processor
    from cascade_rl.rollout import RolloutRequest, SamplingParams
    from cascade_rl.rollout.vllm import VLLMEngine
    from cascade_rl.rollout.vllm_support import VLLMSettings

    model, processor = build_tiny_internvl("tiny_hd32", seed=0)
    save_policy(model, processor, tmp_path, dtype="bfloat16")
    settings = VLLMSettings(gpu_memory_utilization=0.2, sleep=True, max_model_len=1024)
    engine = VLLMEngine(str(tmp_path), load_processor(tmp_path), max_tiles=4, settings=settings)
    request = [RolloutRequest("a", [{"role": "user", "content": [{"type": "image"}]}], [shapes_image(128, 64)])]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    before = engine.generate(request, n=1, sampling=greedy)[0].token_ids
    assert engine.sleep_between_calls and not engine.awake  # asleep between calls
    other = type(model)(model.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.model.language_model.norm.weight.neg_()  # reverses the logits' order
    engine.update_weights(other)
    assert engine.awake == {"weights"}  # the KV cache waits for the next generate
    after = engine.generate(request, n=1, sampling=greedy)[0].token_ids
    assert after != before
    engine.close()
