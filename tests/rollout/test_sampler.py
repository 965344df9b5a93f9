"""The decode loop: filtering rules, greedy equal to transformers' generate, per-row generators."""

import math

import torch
from synthetic import shapes_image

from cascade_rl.models import encode_prompt
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams
from cascade_rl.rollout.sampler import filter_logits


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    kept = filter_logits(logits, SamplingParams(top_k=2)).isfinite()[0].tolist()
    assert kept == [False, False, True, True]
    # softmax([0, 1, 2, 3]) = [0.032, 0.087, 0.237, 0.644]: token 3 alone (0.644) is under 0.7, so token 2 is kept
    # too (it crosses 0.7); tokens 1 and 0 come after the mass already reached 0.881.
    probs = [math.exp(v) / sum(math.exp(u) for u in range(4)) for v in range(4)]
    assert probs[3] < 0.7 < probs[3] + probs[2]
    kept = filter_logits(logits, SamplingParams(top_p=0.7)).isfinite()[0].tolist()
    assert kept == [False, False, True, True]
    assert filter_logits(logits, SamplingParams(top_p=0.5)).isfinite()[0].tolist() == [False, False, False, True]


def test_greedy_decoding_equals_transformers_generate(tiny_internvl):
    model, processor = tiny_internvl
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
    images = [shapes_image(128, 64)]
    engine = HFEngine(model, processor, max_tiles=4)
    ours = engine.generate(
        [RolloutRequest("a", messages, images)], n=1, sampling=SamplingParams(0.0, max_new_tokens=8)
    )
    prompt = encode_prompt(processor, messages, images, max_tiles=4)
    with torch.no_grad():
        reference = model.generate(
            input_ids=prompt.input_ids[None],
            pixel_values=prompt.pixel_values,
            max_new_tokens=8,
            do_sample=False,
            suppress_tokens=processor.image_token_ids,
            eos_token_id=processor.tokenizer.eos_token_id,
        )
    assert ours[0].token_ids == reference[0, prompt.input_ids.numel() :].tolist()[: len(ours[0].token_ids)]


def test_seeded_samples_do_not_depend_on_batch_size(tiny_internvl):
    model, processor = tiny_internvl
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}]
    requests = [RolloutRequest(f"p{i}", messages, [shapes_image(64, 64, seed=i)]) for i in range(3)]
    sampling = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=6, seed=9)
    small = HFEngine(model, processor, max_tiles=4, batch_size=2).generate(requests, n=2, sampling=sampling)
    large = HFEngine(model, processor, max_tiles=4, batch_size=6).generate(requests, n=2, sampling=sampling)
    assert [r.token_ids for r in small] == [r.token_ids for r in large]
    assert len({tuple(r.token_ids) for r in small}) > 1  # sampling, not a constant
