"""Preference pairs as the model sees them: one prompt (with images) and two completions sharing it.

The MPO pair source (train/pair_data.py) calls `pair_num_tokens` when it measures a pair and `encode_pair` when it
encodes one; the stage scores an encoded pair with `pair_token_logps`. Tiling and the chat template stay in
models/chat.py, packed scoring in models/logprobs.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade_rl.models.chat import encode_prompt, prompt_num_tokens, tokenizer_of
from cascade_rl.models.logprobs import CHUNK_SIZE, packed_logps


@dataclass
class EncodedPair:
    """prompt_ids [P] (ends in `<|im_start|>assistant\\n`), pixel_values [N_tiles, 3, H, W] or None, and the
    chosen / rejected completion ids [T_c], [T_r]: the response followed by `<|im_end|>`."""

    prompt_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    chosen_ids: torch.Tensor
    rejected_ids: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Tokens of the longest of the two full sequences: what must fit into max_length."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def encode_pair(processor, messages, images, chosen: str, rejected: str, *, max_tiles: int) -> EncodedPair:
    """Tokenise a pair (and tile its images). Completions are `response + <|im_end|>` (see `completion_ids`).

    (InternVL's MPO code also scores the `\\n` after `<|im_end|>`; we score exactly what generation produces.)
    """
    prompt = encode_prompt(processor, messages, images, max_tiles=max_tiles)
    chosen_ids, rejected_ids = (torch.tensor(completion_ids(processor, text)) for text in (chosen, rejected))
    return EncodedPair(prompt.input_ids, prompt.pixel_values, chosen_ids, rejected_ids)


def pair_num_tokens(
    processor, messages, sizes: list[tuple[int, int]], chosen: str, rejected: str, *, max_tiles: int
) -> int:
    """`EncodedPair.num_tokens` of the pair `encode_pair` would build, from its images' (width, height) sizes
    alone: no image is loaded or tiled."""
    prompt = prompt_num_tokens(processor, messages, sizes, max_tiles=max_tiles)
    return prompt + max(len(completion_ids(processor, chosen)), len(completion_ids(processor, rejected)))


def completion_ids(processor, text: str) -> list[int]:
    """A completion's token ids: `text + <|im_end|>`, the tokens a rollout of that response would be."""
    tokenizer = tokenizer_of(processor)
    return tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]


def pair_token_logps(
    model, pair: EncodedPair, *, pad_id: int = 0, chunk_size: int = CHUNK_SIZE, fixed_call_order: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_logps [2, T_max], mask [2, T_max]) for (chosen, rejected): vision and prompt encoded once, the pair
    scored in one call over one packed row (`packed_logps`); chunk_size, fixed_call_order: as there."""
    return packed_logps(
        model,
        pair.prompt_ids,
        [pair.chosen_ids, pair.rejected_ids],
        pixel_values=pair.pixel_values,
        pad_id=pad_id,
        chunk_size=chunk_size,
        fixed_call_order=fixed_call_order,
    )
