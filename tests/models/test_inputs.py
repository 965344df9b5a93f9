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


def module_calls(model, fn) -> list[str]:
    """Names of the policy's top-level parts, in the order `fn()` calls them (every call recorded)."""
    parts = {
        "embed": model.get_input_embeddings(),
        "tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "decoder": model.get_decoder(),
        "head": model.get_output_embeddings(),
    }
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_, name=n: calls.append(name)) for n, m in parts.items()]
    try:
        fn()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def test_fixed_call_order_scores_the_same_with_the_same_calls_for_any_prompt(tiny_internvl):
    # What ZeRO-3 needs (it gathers parameters per module call, in lockstep over the ranks): an image prompt and a
    # text-only one, with one-token or longer completions, make the same module calls in the same order, frozen
    # vision cache or pixels, and score exactly as the plain path does.
    model, processor = tiny_internvl
    text_only = [{"role": "user", "content": [{"type": "text", "text": "How many squares?"}]}]
    with_image = encode_request(processor, RolloutRequest("p", MESSAGES, [shapes_image(128, 64)]), max_tiles=6)
    without = encode_request(processor, RolloutRequest("q", text_only, []), max_tiles=6)
    longer, one_token = [torch.tensor([11, 12, 13]), torch.tensor([14])], [torch.tensor([15]), torch.tensor([16])]
    orders = []
    with torch.no_grad():
        for prompt in (with_image, without):
            for completions in (longer, one_token):
                plain, mask = completion_logps(model, prompt, completions, temperature=1.0, pad_id=0)
                for cached in (False, True):
                    fixed = with_vision_cache(model, prompt, fixed_call_order=True) if cached else prompt

                    def score(fixed=fixed, completions=completions):
                        kw = dict(temperature=1.0, pad_id=0, chunk_size=1 << 30, fixed_call_order=True)
                        score.out = completion_logps(model, fixed, completions, **kw)

                    orders.append((cached, tuple(module_calls(model, score))))
                    torch.testing.assert_close(score.out[0], plain, atol=1e-5, rtol=1e-5)
                    assert torch.equal(score.out[1], mask)
    # With the pixels: embeddings, tower, projector, decoder, head (the prompt's last position), then the decoder
    # and the head once over the completions; with the cache the tower ran before (`with_vision_cache`).
    # With the pixels: embeddings, tower, projector, decoder, head (the prompt's last position), then the decoder
    # (which embeds the completion ids itself) and the head once over the completions; with the cache the tower ran
    # before, in `with_vision_cache`, which calls the same modules for a prompt without images (a blank tile).
    completion_pass = ("decoder", "embed", "head")
    assert {order for cached, order in orders if not cached} == {
        ("embed", "tower", "projector", "decoder", "head", *completion_pass)
    }
    assert {order for cached, order in orders if cached} == {
        ("embed", "projector", "decoder", "head", *completion_pass)
    }
    blank = with_vision_cache(model, without, fixed_call_order=True)
    assert module_calls(model, lambda: with_vision_cache(model, with_image, fixed_call_order=True)) == module_calls(
        model, lambda: with_vision_cache(model, without, fixed_call_order=True)
    )
    assert blank.vision_cache is not None and with_vision_cache(model, without).vision_cache is None
