"""Chat encoding for training: InternVL template, image-token expansion, and the assistant-only loss mask.

As in InternVL's own `preprocess_internvl2_5`, a conversation is tokenised segment by segment: the text before each
assistant reply (ending in `<|im_start|>assistant\\n`), the reply plus its closing `<|im_end|>` (trained), and the
`\\n` after it (not trained). Splits at special tokens tokenise exactly as the whole string would; the split after
`assistant\\n` is the same one generation makes, so trained tokens are the tokens a rollout produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image


@dataclass
class EncodedChat:
    """One tokenised conversation.

    input_ids: [T] token ids, image blocks expanded; loss_mask: [T] bool, True on trained (assistant) tokens;
    pixel_values: [N_tiles, 3, H, W] or None; num_tiles: tiles per image, in order of appearance.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    pixel_values: torch.Tensor | None = None
    num_tiles: list[int] = field(default_factory=list)


def tokenizer_of(processor):
    """The tokenizer inside a processor (or the tokenizer itself, for text-only policies)."""
    return getattr(processor, "tokenizer", processor)


def process_images(processor, images: list[Image.Image], *, max_tiles: int) -> tuple[torch.Tensor | None, list[int]]:
    """Dynamic tiling (SPEC §6): pixel_values [N_tiles, 3, H, W] and the tile count of each image, each image
    cropped into at most `tiles_per_image(max_tiles, len(images))` tiles (plus its thumbnail)."""
    if not images:
        return None, []
    out = _image_processor(processor)(
        images=[im.convert("RGB") for im in images], **tiling_kwargs(max_tiles, len(images)), return_tensors="pt"
    )
    num_tiles = [int(n) for n in out["num_patches"]]
    return out["pixel_values"], num_tiles


def tile_counts(processor, sizes: list[tuple[int, int]], *, max_tiles: int) -> list[int]:
    """Tiles per image from (width, height) sizes alone: the counts `process_images` gives, without any pixels."""
    if not sizes:
        return []
    count = _image_processor(processor).get_number_of_image_patches
    tiling = tiling_kwargs(max_tiles, len(sizes))
    return [int(count(height, width, tiling)) for width, height in sizes]


def tiles_per_image(max_tiles: int, n_images: int) -> int:
    """InternVL's tile budget of each image of a prompt with `n_images` images: max(1, max_tiles // n_images).

    One image keeps the whole budget; 2 images at 12 get 6 each; 5 images at 4 get 1 each (SPEC §2; InternVL's
    `internvl_chat_mpo.py::multi_modal_multi_image_get_item` and verl-internvl's preprocessor). Every path that
    tiles (training, log-probs, the HF and vLLM engines) takes its budget from here.
    """
    return max(1, max_tiles // max(n_images, 1))


def tiling_kwargs(max_tiles: int, n_images: int = 1) -> dict:
    """The image processor's dynamic tiling settings for each image of a prompt with `n_images` images: crop into at
    most `tiles_per_image(max_tiles, n_images)` tiles, plus a thumbnail when cropped. vLLM takes the same keys as
    `mm_processor_kwargs`."""
    return {"crop_to_patches": True, "max_patches": tiles_per_image(max_tiles, n_images)}


def _image_processor(processor):
    if not hasattr(processor, "image_processor"):
        raise ValueError("this policy is text-only (its processor has no image processor) but images were given")
    return processor.image_processor


def expand_image_placeholders(text: str, processor, num_tiles: list[int], start: int = 0) -> tuple[str, int]:
    """Replace each `<IMG_CONTEXT>` placeholder by `<img>` + `<IMG_CONTEXT>` × (tokens per tile × tiles) + `</img>`.

    `start` is the index of the first image this text refers to; returns (text, index of the next image).
    """
    if not hasattr(processor, "image_token"):  # a text-only policy: no placeholders to expand
        return text, start
    token = processor.image_token
    pieces = text.split(token)
    out = [pieces[0]]
    for i, piece in enumerate(pieces[1:]):
        index = start + i
        if index >= len(num_tiles):
            raise ValueError(f"the conversation has more image placeholders than images ({len(num_tiles)})")
        block = token * (processor.image_seq_length * num_tiles[index])
        out.append(f"{processor.start_image_token}{block}{processor.end_image_token}{piece}")
    return "".join(out), start + len(pieces) - 1


def render(processor, messages: list[dict], *, add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_prompt(processor, messages: list[dict]) -> str:
    """The generation prompt: the chat ending in `<|im_start|>assistant\\n`, or, when the last message is the
    assistant's (a reply begun for the model, e.g. DropoutNTP's prefix), ending in that reply's text, left open for
    the model to continue (the template's end-of-turn dropped: `continue_final_message`)."""
    if messages[-1]["role"] == "assistant":
        return processor.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return render(processor, messages, add_generation_prompt=True)


def chat_segments(processor, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) segments: assistant reply + `<|im_end|>` are trained."""
    end_token = tokenizer_of(processor).eos_token
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(processor, messages[:i], add_generation_prompt=True)
        full = render(processor, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot mask it")
        reply = full[len(prompt) :]
        cut = reply.rindex(end_token) + len(end_token)
        segments += [(prompt[len(done) :], False), (reply[:cut], True), (reply[cut:], False)]
        done = full
    rest = render(processor, messages, add_generation_prompt=False)[len(done) :]
    segments.append((rest, False))
    return [(text, trained) for text, trained in segments if text]


def encode_chat(
    processor, messages: list[dict], images: list[Image.Image] = (), *, max_tiles: int = 12
) -> EncodedChat:
    """Tokenise a whole conversation (with replies) for supervised or preference training."""
    pixel_values, num_tiles = process_images(processor, list(images), max_tiles=max_tiles)
    tokenizer = tokenizer_of(processor)
    ids, mask, next_image = [], [], 0
    for text, trained in chat_segments(processor, messages):
        text, next_image = expand_image_placeholders(text, processor, num_tiles, next_image)
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [trained] * len(piece)
    _check_all_images_used(next_image, num_tiles)
    return EncodedChat(torch.tensor(ids), torch.tensor(mask, dtype=torch.bool), pixel_values, num_tiles)


def encode_prompt(
    processor, messages: list[dict], images: list[Image.Image] = (), *, max_tiles: int = 12
) -> EncodedChat:
    """Tokenise the prompt of a conversation for generation (`render_prompt`: it ends in `<|im_start|>assistant\\n`,
    or in the text of a final assistant message, which generation continues)."""
    pixel_values, num_tiles = process_images(processor, list(images), max_tiles=max_tiles)
    ids = _prompt_ids(processor, messages, num_tiles)
    return EncodedChat(torch.tensor(ids), torch.zeros(len(ids), dtype=torch.bool), pixel_values, num_tiles)


def prompt_num_tokens(processor, messages: list[dict], sizes: list[tuple[int, int]], *, max_tiles: int) -> int:
    """len(encode_prompt(...).input_ids) from the images' (width, height) sizes alone: nothing loaded or tiled."""
    return len(_prompt_ids(processor, messages, tile_counts(processor, sizes, max_tiles=max_tiles)))


def _prompt_ids(processor, messages: list[dict], num_tiles: list[int]) -> list[int]:
    """Token ids of the rendered prompt (`render_prompt`) with image blocks of `num_tiles` tiles (one per image)."""
    text = render_prompt(processor, messages)
    text, used = expand_image_placeholders(text, processor, num_tiles)
    _check_all_images_used(used, num_tiles)
    return tokenizer_of(processor)(text, add_special_tokens=False)["input_ids"]


def _check_all_images_used(used: int, num_tiles: list[int]) -> None:
    if used != len(num_tiles):
        raise ValueError(
            f"{len(num_tiles)} images were given but the conversation has {used} image parts; "
            'add one {"type": "image"} content part per image'
        )
