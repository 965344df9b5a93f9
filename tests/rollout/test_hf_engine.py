"""HFEngine: shapes, finish reasons, determinism, and log-probs equal to a teacher-forced forward."""

import pytest
import torch
from continuation import greedy_reference, prefixed_prompt
from synthetic import shapes_image

from cascade_rl.models import encode_prompt
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams


def request(i: int, width: int) -> RolloutRequest:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"How many squares? {i}"}]}]
    return RolloutRequest(f"p{i}", messages, [shapes_image(width, 64, seed=i)], meta={"answer": str(i)})


@pytest.fixture(scope="module")
def rollouts(tiny_internvl):
    model, processor = tiny_internvl
    engine = HFEngine(model, processor, max_tiles=6, batch_size=4)
    requests = [request(0, 64), request(1, 128), request(2, 192)]  # 1, 3 and 4 tiles: ragged prompts
    return requests, engine.generate(
        requests, n=3, sampling=SamplingParams(temperature=0.8, max_new_tokens=10, seed=7)
    )


def test_grouped_by_request_in_order(tiny_internvl, rollouts):
    requests, out = rollouts
    image_ids = set(tiny_internvl[1].image_token_ids)
    assert [(r.prompt_id, r.sample_index) for r in out] == [(q.prompt_id, k) for q in requests for k in range(3)]
    assert all(r.meta == {"answer": r.prompt_id[1:]} for r in out)
    for r in out:
        assert len(r.token_ids) == len(r.logprobs) <= 10
        assert r.finish_reason in ("stop", "length")
        assert not image_ids & set(r.token_ids), "image tokens are never sampled"
        assert (r.finish_reason == "length") == (len(r.token_ids) == 10 and r.token_ids[-1] != 2)


def test_log_probs_match_teacher_forcing(tiny_internvl, rollouts):
    model, processor = tiny_internvl
    requests, out = rollouts
    for r in out:
        req = requests[int(r.prompt_id[1:])]
        prompt = encode_prompt(processor, req.messages, req.images, max_tiles=6)
        # the rollout brings its prompt's model inputs along, as encoded for sampling
        assert torch.equal(r.prompt_inputs.input_ids, prompt.input_ids)
        assert torch.equal(r.prompt_inputs.pixel_values, prompt.pixel_values)
        ids = torch.cat([prompt.input_ids, torch.tensor(r.token_ids)])[None]
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=prompt.pixel_values).logits[0]
        start = prompt.input_ids.numel()
        # logits at position t predict token t+1; temperature 0.8 divides them before the softmax.
        logps = torch.log_softmax(logits[start - 1 : -1] / 0.8, -1).gather(-1, ids[0, start:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(r.logprobs), logps, atol=2e-4, rtol=1e-4)


def test_same_seed_same_samples_and_greedy_is_deterministic(tiny_internvl):
    model, processor = tiny_internvl
    engine = HFEngine(model, processor, max_tiles=6, batch_size=2)
    reqs = [request(0, 64), request(1, 128)]
    sample = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    first, second = engine.generate(reqs, n=2, sampling=sample), engine.generate(reqs, n=2, sampling=sample)
    assert [r.token_ids for r in first] == [r.token_ids for r in second]
    greedy = engine.generate(reqs, n=2, sampling=SamplingParams(temperature=0.0, max_new_tokens=6))
    assert greedy[0].token_ids == greedy[1].token_ids  # two greedy samples of one prompt agree


def test_a_prompt_samples_the_same_whatever_else_is_in_the_call(tiny_internvl):
    model, processor = tiny_internvl
    sample = SamplingParams(temperature=1.0, max_new_tokens=6, seed=11)
    together = HFEngine(model, processor, max_tiles=6, batch_size=3).generate(
        [request(0, 64), request(1, 128)], n=3, sampling=sample
    )
    alone = HFEngine(model, processor, max_tiles=6, batch_size=3).generate([request(1, 128)], n=3, sampling=sample)
    assert [r.token_ids for r in together[3:]] == [r.token_ids for r in alone]


@pytest.mark.parametrize("with_image", [True, False])
def test_an_assistant_prefix_is_continued(tiny_internvl, with_image):
    model, processor = tiny_internvl
    prefix, question = "There are two", request(1, 128)
    if not with_image:
        question = RolloutRequest("p1", [{"role": "user", "content": [{"type": "text", "text": "How many?"}]}])
    continued = RolloutRequest(question.prompt_id, question.messages, question.images, assistant_prefix=prefix)
    engine = HFEngine(model, processor, max_tiles=6, batch_size=2)
    (out,) = engine.generate([continued], n=1, sampling=SamplingParams(temperature=0.0, max_new_tokens=8))
    ids, pixels = prefixed_prompt(processor, continued, max_tiles=6)
    assert torch.equal(out.prompt_inputs.input_ids, ids)
    expected = greedy_reference(model, ids, pixels, suppressed=processor.image_token_ids, eos_id=2, steps=8)
    assert out.token_ids == expected
    body = out.token_ids[:-1] if out.finish_reason == "stop" else out.token_ids
    assert out.text == prefix + processor.tokenizer.decode(body)
