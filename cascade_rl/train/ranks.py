"""GSPO over several processes (`accelerate launch`): each rank samples and scores its share of a step's prompts
with its own engine, and the policy trains data-parallel (DDP averages the gradients; DeepSpeed ZeRO-2/3 reduces
them into each rank's partition).

Rollouts do not depend on which rank samples them (HFEngine seeds each sequence by seed, prompt id and sample
index), and every rank holds the same number of groups of G sequences per mini-batch, so the averaged gradient is
the one a single process would compute over the whole step. Dynamic sampling keeps that balance: the ranks share
their group counts (`rank_counts`) before each refill round, the next prompts are dealt to the ranks still short
(`deal_rows`), and at the end every rank keeps as many groups as the rank with the fewest holds.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather_object


class PolicyCall(torch.nn.Module):
    """The policy behind one module call, so DDP and DeepSpeed see (and synchronise) every forward, with or without
    gradients: forward(fn, *args, **kwargs) → fn(policy, *args, **kwargs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def check_ranks(config, world: int) -> None:
    """Refuse, with the reason, settings that would give ranks different amounts of work."""
    if world == 1:
        return
    for name in ("prompts_per_step", "mini_batch_prompts"):
        if getattr(config, name) % world:
            raise ValueError(f"{name}={getattr(config, name)} must be a multiple of the {world} processes")
    if config.engine == "hf-server":
        raise ValueError(
            "the HF test-double server takes weights from one trainer process; use engine=server (vLLM servers: "
            "rank 0 pushes, every rank samples) or engine=hf / vllm (an engine per rank)"
        )


def rank_counts(accelerator, count: int) -> list[int]:
    """Every rank's `count`, in rank order (all-gathered; [count] on one process)."""
    if accelerator.num_processes == 1:
        return [count]
    value = torch.tensor([count], dtype=torch.long, device=accelerator.device)
    return accelerator.gather(value).tolist()


def deal_rows(rows: list, wanted: list[int], rank: int) -> list:
    """This rank's rows: dealt round-robin (row i to rank i mod world while all want more), skipping the ranks
    that have their `wanted` count. With equal wants rank r gets rows r, r + world, ...; rows past Σ wanted: none's."""
    left, mine, r = list(wanted), [], 0
    for row in rows[: sum(wanted)]:
        while left[r] == 0:
            r = (r + 1) % len(left)
        if r == rank:
            mine.append(row)
        left[r] -= 1
        r = (r + 1) % len(left)
    return mine


SUMMED_OVER_RANKS = (
    "zero_variance_groups",
    "kept_groups",
    "rollout_tokens",
    "rollout_tokens_per_s",
    "update_tokens_per_s",
)


def combine_ranks(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Counts and throughputs summed over the ranks, every other scalar averaged (all ranks log the same keys).
    Rollout metrics are computed over every rank's rollouts, so they are equal on all ranks; update metrics are rank
    means over equal numbers of groups, so their mean is the mean over the step."""
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    summed = accelerator.reduce(values, reduction="sum").tolist()
    world = accelerator.num_processes
    return {k: v if k in SUMMED_OVER_RANKS else v / world for k, v in zip(keys, summed)}


def all_ranks(accelerator, items: list) -> list:
    """Every rank's `items` (rollout records, reward results), concatenated in rank order."""
    return items if accelerator.num_processes == 1 else gather_object(items)
