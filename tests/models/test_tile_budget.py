"""Several images share the tile budget as in InternVL (SPEC §2): max(1, max_tiles // n_images) tiles each, on every
path that tiles: prompts and requests (HF engine, GSPO groups), chats (SFT), MPO pairs, and counts from sizes."""

import pytest
import torch
from models.test_tiling import internvl_tile_count
from synthetic import shapes_image

from cascade_rl.models import encode_chat, encode_prompt, encode_request, tiles_per_image
from cascade_rl.models.chat import prompt_num_tokens
from cascade_rl.models.pairs import encode_pair, pair_num_tokens
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams

TOKENS_PER_TILE = 16  # the tiny preset: (64 px tile / 8 px patch)² · 0.5² pixel shuffle


@pytest.mark.parametrize(
    ("max_tiles", "n_images", "expected"),
    [(12, 1, 12), (12, 2, 6), (12, 5, 2), (4, 5, 1), (1, 3, 1), (12, 0, 12)],
)
def test_tiles_per_image_is_internvls_rule(max_tiles, n_images, expected):
    # max(1, max_tiles // n_images): 12 // 2 = 6, 12 // 5 = 2, 4 // 5 = 0 → 1, 1 // 3 = 0 → 1
    assert tiles_per_image(max_tiles, n_images) == expected


def messages_with(n_images: int, reply: str | None = None) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": "Which has more squares?"}]
    messages = [{"role": "user", "content": content}]
    return messages + ([{"role": "assistant", "content": reply}] if reply is not None else [])


def image_tokens(processor, ids: torch.Tensor) -> int:
    return int((ids == processor.image_token_id).sum())


def test_two_images_at_twelve_tiles_get_six_each_on_every_path(tiny_internvl):
    model, processor = tiny_internvl
    images = [shapes_image(256, 192, seed=1), shapes_image(256, 192, seed=2)]
    # 256×192 (4:3) on 64 px tiles: alone at 12 the grid is 4×3 = 12 tiles + thumbnail = 13; at 6 each (two images)
    # the closest grid with ≤ 6 tiles is 3×2: 6 tiles + thumbnail = 7.
    assert internvl_tile_count(256, 192, tile=64, max_num=12) == 13
    per_image = internvl_tile_count(256, 192, tile=64, max_num=6)
    assert per_image == 7
    assert encode_prompt(processor, messages_with(1), images[:1], max_tiles=12).num_tiles == [13]

    prompt = encode_prompt(processor, messages_with(2), images, max_tiles=12)
    assert prompt.num_tiles == [per_image, per_image] and prompt.pixel_values.shape[0] == 2 * per_image
    assert image_tokens(processor, prompt.input_ids) == 2 * per_image * TOKENS_PER_TILE
    sizes = [im.size for im in images]
    assert prompt_num_tokens(processor, messages_with(2), sizes, max_tiles=12) == len(prompt.input_ids)

    chat = encode_chat(processor, messages_with(2, "The left one."), images, max_tiles=12)
    assert chat.num_tiles == [per_image, per_image]
    assert image_tokens(processor, chat.input_ids) == 2 * per_image * TOKENS_PER_TILE

    pair = encode_pair(processor, messages_with(2), images, "The left one.", "The right.", max_tiles=12)
    assert torch.equal(pair.prompt_ids, prompt.input_ids) and pair.pixel_values.shape[0] == 2 * per_image
    assert pair_num_tokens(processor, messages_with(2), sizes, "The left one.", "The right.", max_tiles=12) == (
        pair.num_tokens
    )

    request = RolloutRequest("p", messages_with(2), images)
    assert torch.equal(encode_request(processor, request, max_tiles=12).input_ids, prompt.input_ids)
    with torch.no_grad():
        (rollout,) = HFEngine(model, processor, max_tiles=12).generate(
            [request], n=1, sampling=SamplingParams(temperature=0.0, max_new_tokens=1)
        )
    assert rollout.prompt_inputs.pixel_values.shape[0] == 2 * per_image


def test_five_images_at_four_tiles_get_one_each(tiny_internvl):
    processor = tiny_internvl[1]
    images = [shapes_image(128, 128, seed=k) for k in range(5)]
    # 128×128 alone at 4 tiles: 2×2 + thumbnail = 5; at max(1, 4 // 5) = 1 tile: the whole image, no thumbnail.
    assert internvl_tile_count(128, 128, tile=64, max_num=4) == 5
    assert internvl_tile_count(128, 128, tile=64, max_num=1) == 1
    prompt = encode_prompt(processor, messages_with(5), images, max_tiles=4)
    assert prompt.num_tiles == [1] * 5 and prompt.pixel_values.shape[0] == 5
    assert image_tokens(processor, prompt.input_ids) == 5 * TOKENS_PER_TILE
    assert prompt_num_tokens(processor, messages_with(5), [im.size for im in images], max_tiles=4) == len(
        prompt.input_ids
    )
