"""PromptRow: stable ids, InternVL chat messages, image sizes and loading, engine requests."""

import pytest
from PIL import Image

from cascade_rl.data import (
    DataError,
    PromptRow,
    image_sizes,
    load_images,
    prompt_id_for,
    row_to_request,
    with_image_placeholders,
)
from cascade_rl.data.rows import question_content


def test_prompt_id_is_a_pinned_hash_of_images_and_question():
    # sha1('[["a.png"], "What is shown?"]') starts 09633f0ada9a2400. Pinned: a change here would make every
    # existing rollout store look empty to a rerun (its prompt ids would no longer match).
    assert prompt_id_for(["a.png"], "What is shown?") == "p-09633f0ada9a2400"
    assert prompt_id_for(["b.png"], "What is shown?") != prompt_id_for(["a.png"], "What is shown?")
    assert prompt_id_for(["a.png"], "What is shown") != prompt_id_for(["a.png"], "What is shown?")
    # list order matters: the images of a multi-image prompt are ordered
    assert prompt_id_for(["a.png", "b.png"], "q") != prompt_id_for(["b.png", "a.png"], "q")


def test_single_image_without_placeholder_goes_first():
    row = PromptRow(id="r1", question="What is shown?", images=["a.png"])
    assert row.to_messages() == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}
    ]


def test_placeholders_are_replaced_in_place_and_their_newline_dropped():
    content = question_content("Image-1: <image>\nImage-2: <image>\nWhich is larger?", 2)
    assert content == [
        {"type": "text", "text": "Image-1: "},
        {"type": "image"},
        {"type": "text", "text": "Image-2: "},
        {"type": "image"},
        {"type": "text", "text": "Which is larger?"},
    ]
    assert question_content("<image>\nWhat?", 1) == [{"type": "image"}, {"type": "text", "text": "What?"}]


def test_placeholder_count_must_match_images():
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        question_content("<image><image> q", 1)


def test_text_only_row_and_system_prompts():
    row = PromptRow(id="r", question="2+2?")
    assert row.to_messages() == [{"role": "user", "content": [{"type": "text", "text": "2+2?"}]}]
    system = {"role": "system", "content": [{"type": "text", "text": "be brief"}]}
    assert row.to_messages(system_prompt="be brief")[0] == system
    # a row's own system prompt wins over the default
    own = PromptRow(id="r", question="2+2?", system_prompt="think first")
    assert own.to_messages(system_prompt="be brief")[0]["content"][0]["text"] == "think first"


def test_with_image_placeholders():
    assert with_image_placeholders("q", 0) == "q"
    assert with_image_placeholders("q", 1) == "<image>\nq"
    assert with_image_placeholders("<image>\nq", 1) == "<image>\nq"
    assert with_image_placeholders("q", 2) == "Image-1: <image>\nImage-2: <image>\nq"


def test_load_images_converts_to_rgb_in_row_order(tmp_path):
    Image.new("L", (4, 3), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (2, 5), (255, 0, 0, 10)).save(tmp_path / "rgba.png")
    row = PromptRow(id="r", question="q", images=["gray.png", "rgba.png"])
    images = load_images(row, tmp_path)
    assert [im.mode for im in images] == ["RGB", "RGB"]
    assert [im.size for im in images] == [(4, 3), (2, 5)]
    assert images[0].getpixel((0, 0)) == (128, 128, 128)
    assert images[1].getpixel((1, 4)) == (255, 0, 0)


def test_load_images_errors_name_the_row_and_the_root(tmp_path):
    row = PromptRow(id="r", question="q", images=["nope.png"], source="prompts.jsonl line 7")
    with pytest.raises(DataError, match=r"prompts.jsonl line 7: image 'nope.png' not found under image_root=") as e:
        load_images(row, tmp_path)
    assert e.value.reason == "missing_image"
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then garbage
    row = PromptRow(id="r", question="q", images=["bad.png"], source="prompts.jsonl line 8")
    with pytest.raises(DataError, match=r"prompts.jsonl line 8: image 'bad.png' .* cannot be decoded") as e:
        load_images(row, tmp_path)
    assert e.value.reason == "unreadable_image"


@pytest.mark.parametrize("read", [image_sizes, load_images])
def test_header_sizes_and_decoding_name_the_same_problems(tmp_path, read):
    row = PromptRow(id="r", question="q", images=["nope.png"], source="pairs.jsonl line 4")
    with pytest.raises(DataError, match=r"pairs.jsonl line 4: image 'nope.png' not found under image_root=") as e:
        read(row, tmp_path)
    assert e.value.reason == "missing_image"
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    row = PromptRow(id="r", question="q", images=["junk.png"], source="pairs.jsonl line 5")
    with pytest.raises(DataError, match=r"pairs.jsonl line 5: image 'junk.png' under image_root=.* cannot be") as e:
        read(row, tmp_path)
    assert e.value.reason == "unreadable_image"


def test_image_sizes_read_headers_in_row_order(tmp_path):
    Image.new("L", (4, 3), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (2, 5), (255, 0, 0, 10)).save(tmp_path / "rgba.png")
    row = PromptRow(id="r", question="q", images=["rgba.png", "gray.png", "rgba.png"])
    assert image_sizes(row, tmp_path) == [im.size for im in load_images(row, tmp_path)] == [(2, 5), (4, 3), (2, 5)]


def test_row_to_request_carries_messages_images_and_columns(tmp_path):
    Image.new("RGB", (3, 3), (1, 2, 3)).save(tmp_path / "a.png")
    row = PromptRow(id="p1", question="<image>\nHow many?", images=["a.png"], answer="3", extra={"bbox": [1, 2]})
    request = row_to_request(row, tmp_path)
    assert request.prompt_id == "p1"
    assert request.messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}
    ]
    assert [im.getpixel((0, 0)) for im in request.images] == [(1, 2, 3)]
    assert request.meta == {"question": "<image>\nHow many?", "images": ["a.png"], "answer": "3", "bbox": [1, 2]}
