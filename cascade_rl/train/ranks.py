"""GSPO over several processes (`accelerate launch`): each rank samples and scores its share of a step's prompts
with its own engine, and the policy trains data-parallel (DDP averages the gradients).

Rollouts do not depend on which rank samples them (HFEngine seeds each sequence by seed, prompt id and sample
index), and every rank holds the same number of groups of G sequences per mini-batch, so the averaged gradient is
the one a single process would compute over the whole step.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather_object


class GroupScorer(torch.nn.Module):
    """The policy behind one module call, so DDP sees (and synchronises) every gradient-carrying forward.

    forward(group, temperature, pad_id) → group.logps(policy, ...): ([G, T] token log-probs, [G, T] mask).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, group, temperature: float, pad_id: int):
        return group.logps(self.model, temperature=temperature, pad_id=pad_id)


def check_ranks(config, world: int) -> None:
    """Refuse, with the reason, settings that would give ranks different amounts of work."""
    if world == 1:
        return
    for name in ("prompts_per_step", "mini_batch_prompts"):
        if getattr(config, name) % world:
            raise ValueError(f"{name}={getattr(config, name)} must be a multiple of the {world} processes")
    if config.drop_zero_variance:
        raise ValueError(
            "drop_zero_variance refills groups per rank, so ranks could hold different numbers of groups; "
            "set drop_zero_variance=false when training on several processes"
        )
    if config.engine in ("server", "hf-server"):
        raise ValueError("a rollout server takes weights from one trainer process; use engine=hf or vllm per rank")


def rank_share(rows: list, rank: int, world: int) -> list:
    """This rank's prompts of a step: every world-th, starting at its rank."""
    return rows[rank::world]


SUMMED_OVER_RANKS = ("zero_variance_groups", "rollout_tokens", "rollout_tokens_per_s", "update_tokens_per_s")


def combine_ranks(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Counts and throughputs summed over the ranks, every other scalar averaged (all ranks log the same keys;
    ranks hold equal numbers of groups, so a mean of rank means is the mean over the step)."""
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    summed = accelerator.reduce(values, reduction="sum").tolist()
    world = accelerator.num_processes
    return {k: v if k in SUMMED_OVER_RANKS else v / world for k, v in zip(keys, summed)}


def all_records(accelerator, records: list) -> list:
    """Every rank's rollout records, in rank order (for the pass-rate ledger)."""
    return records if accelerator.num_processes == 1 else gather_object(records)
