"""Model inputs: requests encoded like `encode_prompt`, batches padded on the right side with pixels in order, and
a prompt's cached vision output scoring like its pixels."""

import torch
from synthetic import shapes_image

from cascade_rl.models import (
    EncodedChat,
    PromptInputs,
    collate_chats,
    collate_prompts,
    completion_logps,
    encode_prompt,
    encode_request,
    with_vision_cache,
)
from cascade_rl.rollout import RolloutRequest

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]


def test_a_request_encodes_like_its_prompt(tiny_internvl):
    processor = tiny_internvl[1]
    image = shapes_image(128, 64)
    encoded = encode_request(processor, RolloutRequest("p", MESSAGES, [image]), max_tiles=6)
    prompt = encode_prompt(processor, MESSAGES, [image], max_tiles=6)
    assert torch.equal(encoded.input_ids, prompt.input_ids) and torch.equal(encoded.pixel_values, prompt.pixel_values)
    assert encoded.vision_cache is None


def test_prompts_pad_left_and_chats_pad_right_with_pixels_in_batch_order():
    pixels = [torch.full((n, 3, 2, 2), float(n)) for n in (1, 3)]
    prompts = [
        PromptInputs(torch.tensor([5, 6]), pixels[0]),
        PromptInputs(torch.tensor([7])),
        PromptInputs(torch.tensor([8, 9, 4]), pixels[1]),
    ]
    batch = collate_prompts(prompts, pad_id=0, device="cpu", dtype=torch.float16)
    assert batch["input_ids"].tolist() == [[0, 5, 6], [0, 0, 7], [8, 9, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert batch["pixel_values"].dtype == torch.float16
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1, 3, 3, 3]  # one tile of prompt 0, then prompt 2's three
    chats = [
        EncodedChat(torch.tensor([5, 6, 7]), torch.tensor([False, True, True]), pixels[1]),
        EncodedChat(torch.tensor([8]), torch.tensor([True])),
    ]
    batch = collate_chats(chats, pad_id=0, device="cpu", dtype=torch.float32)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[False, True, True], [True, False, False]]
    assert torch.equal(batch["pixel_values"], pixels[1])
    assert "pixel_values" not in collate_chats(chats[1:], pad_id=0, device="cpu", dtype=torch.float32)


def test_cached_vision_scores_like_the_pixels(tiny_internvl):
    model, processor = tiny_internvl
    prompt = encode_request(processor, RolloutRequest("p", MESSAGES, [shapes_image(128, 64)]), max_tiles=6)
    cached = with_vision_cache(model, prompt)
    assert cached.vision_cache is not None and prompt.vision_cache is None  # the engine's encoding is left as is
    completions = [torch.tensor([11, 12, 13]), torch.tensor([14])]
    with torch.no_grad():
        plain, mask = completion_logps(model, prompt, completions, temperature=1.0, pad_id=0)
        fast, fast_mask = completion_logps(model, cached, completions, temperature=1.0, pad_id=0)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, fast_mask)
