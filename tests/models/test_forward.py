"""Image features land exactly on the `<IMG_CONTEXT>` positions; greedy generation runs."""

import torch
from synthetic import shapes_image

from cascade_rl.models import encode_prompt


def user_turn(question: str, n_images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}]


def test_image_features_fill_the_context_positions(tiny_internvl):
    model, processor = tiny_internvl
    images = [shapes_image(128, 64), shapes_image(64, 64, seed=1)]  # 2 + thumbnail, and 1 tile
    enc = encode_prompt(processor, user_turn("How many squares?", 2), images, max_tiles=6)
    context = enc.input_ids == processor.image_token_id
    assert enc.num_tiles == [3, 1]
    assert int(context.sum()) == processor.image_seq_length * 4 == 64

    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(input_ids=enc.input_ids[None], pixel_values=enc.pixel_values)
        features = model.model.get_image_features(pixel_values=enc.pixel_values).pooler_output
    hook.remove()
    assert features.shape[:2] == (4, 16)
    embeds = captured["embeds"][0]
    torch.testing.assert_close(embeds[context], features.reshape(-1, features.shape[-1]), rtol=0, atol=0)
    text_embeds = model.get_input_embeddings()(enc.input_ids[~context])
    torch.testing.assert_close(embeds[~context], text_embeds, rtol=0, atol=0)


def test_image_blocks_are_delimited(tiny_internvl):
    _, processor = tiny_internvl
    enc = encode_prompt(processor, user_turn("Where?"), [shapes_image(128, 64)], max_tiles=6)
    ids = enc.input_ids.tolist()
    start, end = ids.index(processor.start_image_token_id), ids.index(processor.end_image_token_id)
    assert set(ids[start + 1 : end]) == {processor.image_token_id} and end - start - 1 == 3 * 16


def test_greedy_generation_is_deterministic(tiny_internvl):
    model, processor = tiny_internvl
    enc = encode_prompt(processor, user_turn("How many squares?"), [shapes_image(64, 64)], max_tiles=6)
    kwargs = dict(input_ids=enc.input_ids[None], pixel_values=enc.pixel_values, max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        first, second = model.generate(**kwargs), model.generate(**kwargs)
    assert first.shape[1] > enc.input_ids.numel()
    assert torch.equal(first, second)
    assert torch.equal(first[0, : enc.input_ids.numel()], enc.input_ids)
