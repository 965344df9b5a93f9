"""Online RL batches: G rollouts per prompt, scored, with group advantages and trainer-side old log-probs.

A `Group` holds everything the update needs for one prompt, so every mini-batch epoch reuses the prompt encoding,
the cached vision features (frozen vision) and the old log-probs computed once per rollout batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade_rl.models import encode_prompt
from cascade_rl.models.logprobs import shared_prompt_logps
from cascade_rl.models.vision_cache import vision_features
from cascade_rl.rollout import Rollout


@dataclass
class Group:
    """One prompt and its G rollouts. completions: G tensors [T_g]; engine_logps: G tensors [T_g];
    rewards, advantages: [G]; old_logps, mask: [G, T_max] (filled by `compute_old_logps`)."""

    prompt_id: str
    prompt_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    vision_cache: torch.Tensor | None
    completions: list[torch.Tensor]
    engine_logps: list[torch.Tensor]
    truncated: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.completions)

    @property
    def zero_variance(self) -> bool:
        return bool(torch.all(self.rewards == self.rewards[0]))

    def logps(self, model, *, temperature: float, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[G, T_max] token log-probs of the completions under `model` (prompt and vision encoded once)."""
        return shared_prompt_logps(
            model,
            self.prompt_ids,
            self.completions,
            pixel_values=None if self.vision_cache is not None else self.pixel_values,
            vision_cache=self.vision_cache,
            temperature=temperature,
            pad_id=pad_id,
        )


def make_group(
    model, processor, request, rollouts: list[Rollout], rewards: list[float], *, max_tiles: int, frozen_vision: bool
) -> Group:
    """Encode a request's prompt once; with a frozen vision tower, run it once and keep its output."""
    prompt = encode_prompt(processor, request.messages, request.images, max_tiles=max_tiles)
    cache = None
    if frozen_vision and prompt.pixel_values is not None:
        cache = vision_features(model, prompt.pixel_values)
    return Group(
        prompt_id=request.prompt_id,
        prompt_ids=prompt.input_ids,
        pixel_values=prompt.pixel_values,
        vision_cache=cache,
        completions=[torch.tensor(_nonempty(r).token_ids) for r in rollouts],
        engine_logps=[torch.tensor(r.logprobs) for r in rollouts],
        truncated=torch.tensor([r.finish_reason == "length" for r in rollouts]),
        rewards=torch.tensor(rewards, dtype=torch.float32),
    )


def _nonempty(rollout: Rollout) -> Rollout:
    if not rollout.token_ids:
        raise ValueError(f"rollout ({rollout.prompt_id}, {rollout.sample_index}) has no tokens; raise max_new_tokens")
    return rollout


@torch.no_grad()
def compute_old_logps(model, groups: list[Group], *, temperature: float, pad_id: int) -> dict[str, float]:
    """Fill each group's old_logps/mask with the trainer's log-probs before any update; returns the mean absolute
    gap between the engine's and the trainer's per-token log-probs (the mismatch metric)."""
    gap, tokens = 0.0, 0
    for group in groups:
        group.old_logps, group.mask = group.logps(model, temperature=temperature, pad_id=pad_id)
        for k, engine in enumerate(group.engine_logps):
            trainer = group.old_logps[k, : len(engine)].cpu()
            gap += float((trainer - engine).abs().sum())
            tokens += len(engine)
    return {"logprob_gap_engine_vs_trainer": gap / max(tokens, 1)}
