"""Shared-prompt scoring equals independent full forwards: log-probs and gradients (fp32).

Every scorer runs every check: `shared_prompt_logps` (prompt keys/values cached and repeated per completion),
`packed_logps` (prompt and completions in one packed row under a block attention mask), and `packed_logps` with
its embeddings built in ZeRO-3's fixed call order."""

import math
from functools import partial

import pytest
import torch
from synthetic import shapes_image

from cascade_rl.models import build_tiny_internvl, encode_prompt
from cascade_rl.models.logprobs import full_sequence_logps, packed_layout, packed_logps, shared_prompt_logps


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


@pytest.fixture(
    params=[shared_prompt_logps, packed_logps, partial(packed_logps, fixed_call_order=True)],
    ids=["kv_cache", "packed", "packed_fixed_call_order"],
)
def score(request):
    return request.param


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_log_probs_match_full_forwards(setup, score):
    model, prompt, completions = setup
    shared, mask = score(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)
    assert mask.sum(1).tolist() == [len(c) for c in completions]
    for k, completion in enumerate(completions):
        full = full_sequence_logps(model, prompt.input_ids, completion, pixel_values=prompt.pixel_values)
        torch.testing.assert_close(shared[k, : len(completion)], full, atol=1e-5, rtol=1e-5)
        assert torch.all(shared[k, len(completion) :] == 0)


def test_gradients_match_full_forwards(setup, score):
    model, prompt, completions = setup
    weights = [1.0, -0.7]  # a DPO-like signed combination of the two sequence log-probs
    model.zero_grad()
    shared, _ = score(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)
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


def test_temperature_scales_logits(setup, score):
    model, prompt, completions = setup
    with torch.no_grad():
        hot, _ = score(model, prompt.input_ids, completions[:1], pixel_values=prompt.pixel_values, temperature=0.5)
        ref = full_sequence_logps(
            model, prompt.input_ids, completions[0], pixel_values=prompt.pixel_values, temperature=0.5
        )
    torch.testing.assert_close(hot[0], ref, atol=1e-5, rtol=1e-5)


def test_frozen_vision_cache_gives_equal_logps_and_grads(setup, score):
    from cascade_rl.models.parts import freeze_parts
    from cascade_rl.models.vision_cache import vision_features

    model, prompt, completions = setup
    freeze_parts(model, vision=True)
    cache = vision_features(model, prompt.pixel_values)
    assert cache.shape[:2] == (3, 16)  # 2 tiles + thumbnail, 16 tokens per tile

    model.zero_grad()
    plain, _ = score(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)
    plain.sum().backward()
    slow = grads(model)
    model.zero_grad()
    fast, _ = score(model, prompt.input_ids, completions, vision_cache=cache)
    fast.sum().backward()
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-6)
    fast_grads = grads(model)
    assert fast_grads.keys() == slow.keys() and not any("vision_tower" in n for n in slow)
    assert any("multi_modal_projector" in n for n in slow)  # the projector still trains
    for name in slow:
        torch.testing.assert_close(fast_grads[name], slow[name], atol=1e-6, rtol=1e-5, msg=name)


def test_small_chunks_give_equal_logps_and_grads(setup, score):
    model, prompt, completions = setup
    results = {}
    for size in (3, 10_000):  # 3 splits both completions into several chunks, one of them partial; 10k is one chunk
        model.zero_grad()
        logps, _ = score(
            model, prompt.input_ids, completions, pixel_values=prompt.pixel_values, temperature=0.7, chunk_size=size
        )
        (logps.sum(1) * torch.tensor([1.0, -0.7])).sum().backward()
        results[size] = logps.detach(), grads(model)
    (small, small_grads), (whole, whole_grads) = results[3], results[10_000]
    assert max(len(c) for c in completions) > 2 * 3 + 1
    torch.testing.assert_close(small, whole, atol=1e-6, rtol=1e-6)
    assert small_grads.keys() == whole_grads.keys()
    for name in whole_grads:
        torch.testing.assert_close(small_grads[name], whole_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_autograd_saves_no_full_vocabulary_logits(setup, score):
    model, prompt, completions = setup
    vocab, k, chunk = model.get_output_embeddings().weight.shape[0], len(completions), 4
    assert max(len(c) for c in completions) > chunk + 1
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps, _ = score(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values, chunk_size=chunk)
    logps.sum().backward()
    # Unchunked, autograd would keep [K, T, V] logits and their log_softmax; now only the prompt pass's first-token
    # [K, V] rows may be kept (chunks save their [K, chunk, D] hidden input and recompute their logits).
    kept = [s for s in saved if s[0] == k and s[-1] == vocab and math.prod(s[1:-1]) > 1]
    assert not kept, kept


def test_packed_layout_by_hand():
    # Prompt of 3 tokens, completions of 2 and 3 tokens. A completion's last token is not fed (it predicts nothing
    # scored), so the row is p0 p1 p2 | a0 | b0 b1: L = 3 + 1 + 2 = 6. a0 and b0 both sit at position 3, b1 at 4.
    allowed, positions, reads = packed_layout(3, [2, 3])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # p0: causal prompt
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],  # a0: the prompt and itself
            [1, 1, 1, 0, 1, 0],  # b0: the prompt and itself, never a0
            [1, 1, 1, 0, 1, 1],  # b1: the prompt, b0 and itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    assert positions.tolist() == [0, 1, 2, 3, 3, 4]
    # a0 is predicted at p2 (index 2), a1 at a0 (index 3); b0 at p2, b1 at b0 (4), b2 at b1 (5).
    assert [r.tolist() for r in reads] == [[2, 3], [2, 4, 5]]


def test_packed_scoring_refuses_flash_attention(setup):
    model, prompt, completions = setup
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa"):
        packed_logps(model, prompt.input_ids, completions, pixel_values=prompt.pixel_values)


def test_packed_scoring_of_a_text_only_causal_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(config).eval()
    prompt = torch.randint(0, 50, (7,))
    completions = [torch.randint(0, 50, (n,)) for n in (4, 1, 6)]
    with torch.no_grad():
        packed, mask = packed_logps(model, prompt, completions)
        for k, completion in enumerate(completions):
            full = full_sequence_logps(model, prompt, completion)
            torch.testing.assert_close(packed[k, : len(completion)], full, atol=1e-5, rtol=1e-5)
    assert mask.sum(1).tolist() == [4, 1, 6]


def test_fixed_call_order_changes_no_value_but_calls_the_vision_tower(setup):
    model, prompt, completions = setup
    messages = [{"role": "user", "content": [{"type": "text", "text": "How many squares?"}]}]
    processor = build_tiny_internvl("tiny", seed=1)[1]  # the setup's processor (same tokenizer)
    text_prompt = encode_prompt(processor, messages, [], max_tiles=6)
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    results = {}
    for fixed in (False, True):
        model.zero_grad()
        logps, _ = packed_logps(model, text_prompt.input_ids, completions, fixed_call_order=fixed)
        logps.sum().backward()
        results[fixed] = logps.detach(), grads(model)
    hook.remove()
    assert len(calls) == 1  # only the fixed-order pass ran the vision tower (on a blank tile)
    (plain, plain_grads), (fixed, fixed_grads) = results[False], results[True]
    assert torch.equal(fixed, plain)
    vision = [n for n in fixed_grads if "vision_tower" in n]
    assert vision and not any("vision_tower" in n for n in plain_grads)  # in the graph only in fixed order
    assert all(torch.count_nonzero(fixed_grads[n]) == 0 for n in vision)  # ... with zero gradient
    for name in plain_grads:
        torch.testing.assert_close(fixed_grads[name], plain_grads[name], atol=0, rtol=0, msg=name)
