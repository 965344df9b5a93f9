"""A batched decode loop with one random generator per sequence.

transformers' `generate` draws every row of a batch from one global RNG, so a sequence's sample depends on what
else is in its batch. Here each row samples with its own `torch.Generator`, seeded by (seed, prompt id, sample
index): prompts can share batches freely and still give the same rollouts on a rerun or a resume.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from cascade_rl.rollout.base import SamplingParams


def filter_logits(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of [B, V] temperature-scaled logits (filtered entries → -inf)."""
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > sampling.top_p  # keep the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_tokens(logits: torch.Tensor, sampling: SamplingParams, generators: list[torch.Generator | None]):
    """One token per row of [B, V] logits: argmax when temperature is 0, else a draw from the filtered softmax of
    logits / temperature with that row's generator."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / sampling.temperature, sampling).softmax(-1)
    return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)])


@torch.no_grad()
def decode(
    model,
    input_ids,
    attention_mask,
    pixel_values,
    sampling: SamplingParams,
    generators,
    *,
    eos_id: int,
    suppressed: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to max_new_tokens for a left-padded batch; returns (tokens [B, T], log-probs [B, T]).

    Rows stop at `eos_id` (later positions hold eos and are cut by the caller). `suppressed` ids are never drawn;
    the recorded log-probs are those of the unsuppressed policy, which is what the trainer recomputes.
    """
    cache, mask = DynamicCache(), attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    tokens, logps = [], []
    for _ in range(sampling.max_new_tokens):
        logits = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        drawn = logits.clone()
        drawn[:, suppressed] = float("-inf")
        token = pick_tokens(drawn, sampling, generators)
        logp = torch.log_softmax(logits.float() / (sampling.temperature or 1.0), -1).gather(-1, token[:, None])[:, 0]
        token = torch.where(done, torch.full_like(token, eos_id), token)
        tokens.append(token)
        logps.append(logp)
        done |= token == eos_id
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        inputs = {"input_ids": token[:, None], "attention_mask": mask, "position_ids": positions}
    return torch.stack(tokens, 1), torch.stack(logps, 1)
