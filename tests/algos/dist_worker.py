"""Rank body for test_delta_distributed.py, in its own module so spawned processes can import it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from algos.mpo_step import mpo_step

from cascade_rl.algos import RunningMean

STEPS = 3


def rank_batch(rank: int, step: int) -> tuple[torch.Tensor, ...]:
    """Micro-batch of 2 pairs for (rank, step): four [2] log-prob sums, [2, 3] chosen token log-probs, full mask."""
    gen = torch.Generator().manual_seed(100 * step + rank)
    sums = [-20 * torch.rand(2, generator=gen, dtype=torch.float64) for _ in range(4)]
    return (*sums, -torch.rand(2, 3, generator=gen, dtype=torch.float64), torch.ones(2, 3))


def run_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        running = RunningMean()
        steps = []
        for step in range(STEPS):
            loss, metrics = mpo_step(*rank_batch(rank, step), running=running)
            steps.append({"loss": loss.detach(), "delta": metrics["delta"]})
        torch.save({"steps": steps, "state": running.state_dict()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
