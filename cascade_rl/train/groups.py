"""Online RL batches: G rollouts per prompt, scored, with group advantages and trainer-side old log-probs.

A `Group` holds everything the update needs for one prompt, so every mini-batch epoch reuses the prompt's model
inputs (models/inputs.py: ids, pixels, the frozen vision tower's output) and the old log-probs computed once per
rollout batch. The prompt is encoded once per step: by HFEngine, whose rollouts bring it along, or here when the
engine encoded it elsewhere (vLLM tiles inside vLLM; a rollout server on its own machine). Every model call goes
through a `PolicyCall` (train/ranks.py), the module DDP or DeepSpeed wraps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade_rl.models import PromptInputs, completion_logps, encode_request, with_vision_cache
from cascade_rl.rollout import Rollout


@dataclass
class Group:
    """One prompt and its G rollouts. prompt: its model inputs; completions: G tensors [T_g]; engine_logps: G
    tensors [T_g]; rewards, advantages: [G]; old_logps, mask: [G, T_max] (filled by `compute_old_logps`)."""

    prompt_id: str
    prompt: PromptInputs
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

    def logps(self, policy, **scoring) -> tuple[torch.Tensor, torch.Tensor]:
        """[G, T_max] token log-probs and mask of the completions under `policy` (a `PolicyCall`, prepared or not),
        the prompt and vision encoded once; scoring: `completion_logps`'s options (temperature, pad_id, ...)."""
        return policy(completion_logps, self.prompt, self.completions, **scoring)


def make_group(processor, request, rollouts: list[Rollout], rewards: list[float], *, max_tiles: int) -> Group:
    """One request's group: its prompt's model inputs as the engine's rollouts bring them (HFEngine), or encoded
    here when they come without (vLLM, a server)."""
    prompt = rollouts[0].prompt_inputs
    if prompt is None:
        prompt = encode_request(processor, request, max_tiles=max_tiles)
    return Group(
        prompt_id=request.prompt_id,
        prompt=prompt,
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
def cache_vision(policy, groups: list[Group], *, fixed_call_order: bool = False) -> None:
    """For a frozen vision tower: run it once per group's prompt through `policy` and keep its output
    (`with_vision_cache`; fixed_call_order as there), for the old log-probs and every update epoch."""
    for group in groups:
        group.prompt = policy(with_vision_cache, group.prompt, fixed_call_order=fixed_call_order)


@torch.no_grad()
def compute_old_logps(policy, groups: list[Group], **scoring) -> dict[str, float]:
    """Fill each group's old_logps/mask with the trainer's log-probs (`Group.logps` through `policy`) before any
    update; returns the mean absolute gap between the engine's and the trainer's per-token log-probs (the mismatch
    metric)."""
    gap, tokens = 0.0, 0
    for group in groups:
        group.old_logps, group.mask = group.logps(policy, **scoring)
        for k, engine in enumerate(group.engine_logps):
            trainer = group.old_logps[k, : len(engine)].cpu()
            gap += float((trainer - engine).abs().sum())
            tokens += len(engine)
    return {"logprob_gap_engine_vs_trainer": gap / max(tokens, 1)}
