"""Shared-prompt scoring equals independent full forwards: log-probs and gradients (fp32)."""

import pytest
import torch
from synthetic import shapes_image

from cascade_rl.models import build_tiny_internvl, encode_prompt
from cascade_rl.models.logprobs import full_sequence_logps, shared_prompt_logps


@pytest.fixture
def setup():
    model, processor = build_tiny_internvl("tiny", seed=1)
    model.train()  # dropout is 0 in the tiny config; train mode checks the training graph
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
    prompt = encode_prompt(processor, messages, [shapes_image(128, 64)], max_tiles=6)
    tok = processor.tokenizer
    chosen = torch.tensor(tok("There are 3. Answer: \\boxed{3}<|im_end|>\n")["input_ids"])
    rejected = torch.tensor(tok("Two<|im_end|>\n")["input_ids"])
    return model, prompt, [chosen, rejected]


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_log_probs_match_full_forwards(setup):
    model, prompt, completions = setup
    shared, mask = shared_prompt_logps(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)
    assert mask.sum(1).tolist() == [len(c) for c in completions]
    for k, completion in enumerate(completions):
        full = full_sequence_logps(model, prompt.input_ids, completion, pixel_values=prompt.pixel_values)
        torch.testing.assert_close(shared[k, : len(completion)], full, atol=1e-5, rtol=1e-5)
        assert torch.all(shared[k, len(completion) :] == 0)


def test_gradients_match_full_forwards(setup):
    model, prompt, completions = setup
    weights = [1.0, -0.7]  # a DPO-like signed combination of the two sequence log-probs
    model.zero_grad()
    shared, _ = shared_prompt_logps(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)
    (shared.sum(1) * torch.tensor(weights)).sum().backward()
    fast = grads(model)
    model.zero_grad()
    for w, completion in zip(weights, completions):
        (
            w * full_sequence_logps(model, prompt.input_ids, completion, pixel_values=prompt.pixel_values).sum()
        ).backward()
    slow = grads(model)
    assert fast.keys() == slow.keys()
    assert any("vision_tower" in name for name in fast)  # the gradient reaches the vision tower through the cache
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)


def test_temperature_scales_logits(setup):
    model, prompt, completions = setup
    with torch.no_grad():
        hot, _ = shared_prompt_logps(
            model, prompt.input_ids, completions[:1], pixel_values=prompt.pixel_values, temperature=0.5
        )
        ref = full_sequence_logps(
            model, prompt.input_ids, completions[0], pixel_values=prompt.pixel_values, temperature=0.5
        )
    torch.testing.assert_close(hot[0], ref, atol=1e-5, rtol=1e-5)


def test_frozen_vision_cache_gives_equal_logps_and_grads(setup):
    from cascade_rl.models.parts import freeze_parts
    from cascade_rl.models.vision_cache import vision_features

    model, prompt, completions = setup
    freeze_parts(model, vision=True)
    cache = vision_features(model, prompt.pixel_values)
    assert cache.shape[:2] == (3, 16)  # 2 tiles + thumbnail, 16 tokens per tile

    model.zero_grad()
    plain, _ = shared_prompt_logps(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)
    plain.sum().backward()
    slow = grads(model)
    model.zero_grad()
    fast, _ = shared_prompt_logps(model, prompt.input_ids, completions, vision_cache=cache)
    fast.sum().backward()
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-6)
    fast_grads = grads(model)
    assert fast_grads.keys() == slow.keys() and not any("vision_tower" in n for n in slow)
    assert any("multi_modal_projector" in n for n in slow)  # the projector still trains
    for name in slow:
        torch.testing.assert_close(fast_grads[name], slow[name], atol=1e-6, rtol=1e-5, msg=name)
