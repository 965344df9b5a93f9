"""Preference pairs as the model sees them: one prompt (with images) and two completions sharing it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade_rl.models.chat import encode_prompt, tokenizer_of
from cascade_rl.models.logprobs import shared_prompt_logps


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
    """Tokenise a pair. Completions are `response + <|im_end|>`: the tokens a rollout of that response would be.

    (InternVL's MPO code also scores the `\\n` after `<|im_end|>`; we score exactly what generation produces.)
    """
    prompt = encode_prompt(processor, messages, images, max_tiles=max_tiles)
    tokenizer = tokenizer_of(processor)

    def completion(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"])

    return EncodedPair(prompt.input_ids, prompt.pixel_values, completion(chosen), completion(rejected))


def pair_token_logps(model, pair: EncodedPair, *, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_logps [2, T_max], mask [2, T_max]) for (chosen, rejected); vision and prompt encoded once."""
    return shared_prompt_logps(
        model, pair.prompt_ids, [pair.chosen_ids, pair.rejected_ids], pixel_values=pair.pixel_values, pad_id=pad_id
    )
