"""VLLMEngine on a GPU: same protocol as HFEngine, log-probs close to the trainer's teacher forcing."""

import pytest

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vllm_engine_generates_n_samples_with_logprobs(tiny_checkpoint):
    from synthetic import shapes_image

    from cascade_rl.models import load_policy
    from cascade_rl.rollout import RolloutRequest, SamplingParams
    from cascade_rl.rollout.vllm import VLLMEngine

    _, processor = load_policy(tiny_checkpoint)
    engine = VLLMEngine(tiny_checkpoint, processor, max_tiles=6, gpu_memory_utilization=0.2, enforce_eager=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
    requests = [RolloutRequest("a", messages, [shapes_image(128, 64)])]
    out = engine.generate(requests, n=4, sampling=SamplingParams(temperature=1.0, max_new_tokens=8, seed=0))
    assert [(r.prompt_id, r.sample_index) for r in out] == [("a", k) for k in range(4)]
    assert all(len(r.token_ids) == len(r.logprobs) > 0 for r in out)
    engine.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_colocated_vllm_sleeps_and_takes_new_weights(tiny_checkpoint):
    from synthetic import shapes_image

    from cascade_rl.models import build_tiny_internvl, load_policy
    from cascade_rl.rollout import RolloutRequest, SamplingParams
    from cascade_rl.rollout.vllm import VLLMEngine

    _, processor = load_policy(tiny_checkpoint)
    engine = VLLMEngine(tiny_checkpoint, processor, max_tiles=6, sleep=True, gpu_memory_utilization=0.2)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
    request = [RolloutRequest("a", messages, [shapes_image(128, 64)])]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    before = engine.generate(request, n=1, sampling=greedy)[0].token_ids
    assert engine.asleep
    engine.update_weights(build_tiny_internvl("tiny", seed=5)[0])
    after = engine.generate(request, n=1, sampling=greedy)[0].token_ids
    assert before != after  # other weights, other greedy completion
    engine.close()
