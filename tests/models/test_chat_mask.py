"""The assistant-only loss mask on the InternVL template (SPEC §6)."""

import pytest
import torch
from synthetic import shapes_image

from cascade_rl.models import encode_chat

CONVERSATION = [
    {"role": "system", "content": "You are a careful counter."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]},
    {"role": "assistant", "content": "There are 3 squares. Answer: \\boxed{3}"},
    {"role": "user", "content": "And how many are red?"},
    {"role": "assistant", "content": "One is red. Answer: \\boxed{1}"},
]


@pytest.fixture
def encoded(tiny_internvl):
    _, processor = tiny_internvl
    return encode_chat(processor, CONVERSATION, [shapes_image(128, 64)], max_tiles=6)


def test_only_replies_and_their_im_end_are_trained(tiny_internvl, encoded):
    _, processor = tiny_internvl
    tok = processor.tokenizer
    trained = encoded.input_ids[encoded.loss_mask].tolist()
    expected = "There are 3 squares. Answer: \\boxed{3}<|im_end|>One is red. Answer: \\boxed{1}<|im_end|>"
    assert tok.decode(trained) == expected
    assert trained.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2


def test_no_image_system_or_user_token_is_trained(tiny_internvl, encoded):
    _, processor = tiny_internvl
    image_ids = torch.tensor(processor.image_token_ids)
    assert not encoded.loss_mask[torch.isin(encoded.input_ids, image_ids)].any()
    untrained = processor.tokenizer.decode(
        encoded.input_ids[~encoded.loss_mask & ~torch.isin(encoded.input_ids, image_ids)]
    )
    for text in [
        "You are a careful counter.",
        "How many squares?",
        "And how many are red?",
        "<|im_start|>assistant\n",
    ]:
        assert text in untrained


def test_trained_spans_are_contiguous_and_followed_by_newline(tiny_internvl, encoded):
    tok = tiny_internvl[1].tokenizer
    mask = encoded.loss_mask.int().tolist()
    edges = [i for i in range(1, len(mask)) if mask[i] != mask[i - 1]]
    assert len(edges) == 4  # two spans, each with a start and an end
    for end in edges[1::2]:
        assert tok.decode(encoded.input_ids[end : end + 1]) == "\n"


def test_segments_tokenise_like_the_whole_conversation(tiny_internvl, encoded):
    _, processor = tiny_internvl
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    whole = processor(text=text, images=[shapes_image(128, 64)], images_kwargs={"max_patches": 6}, return_tensors="pt")
    assert whole["input_ids"][0].tolist() == encoded.input_ids.tolist()
    assert torch.equal(whole["pixel_values"], encoded.pixel_values)


def test_image_count_mismatch_is_an_error(tiny_internvl):
    _, processor = tiny_internvl
    with pytest.raises(ValueError, match="2 images were given but the conversation has 1 image part"):
        encode_chat(processor, CONVERSATION, [shapes_image(64, 64), shapes_image(64, 64)])
