"""δ across 2 processes (gloo, spawned here) equals δ of one process that sees the union of their micro-batches."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp
from algos.dist_worker import STEPS, rank_batch, run_rank
from algos.mpo_step import mpo_step

from cascade_rl.algos import RunningMean


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_delta_over_two_ranks_equals_one_process_over_the_union(tmp_path):
    mp.spawn(run_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    union_running = RunningMean()
    for step in range(STEPS):
        union = [torch.cat(parts) for parts in zip(rank_batch(0, step), rank_batch(1, step))]
        loss, metrics = mpo_step(*union, running=union_running)
        for rank in ranks:
            torch.testing.assert_close(rank["steps"][step]["delta"], metrics["delta"], rtol=1e-14, atol=1e-15)
        # Equal pair and token counts per rank: the union's loss is the mean of the two ranks' losses.
        rank_mean = (ranks[0]["steps"][step]["loss"] + ranks[1]["steps"][step]["loss"]) / 2
        torch.testing.assert_close(rank_mean, loss.detach(), rtol=1e-14, atol=1e-15)

    # Each all-reduced update counts world_size, as TRL's RunningMoments does.
    assert ranks[0]["state"]["count"] == ranks[1]["state"]["count"] == 2 * STEPS
    assert union_running.count == STEPS


def test_a_rank_alone_would_drift():
    # Control: without the all-reduce, rank 0's δ is its own running mean and differs from the union's.
    alone, union_running = RunningMean(), RunningMean()
    for step in range(STEPS):
        _, own = mpo_step(*rank_batch(0, step), running=alone)
        union = [torch.cat(parts) for parts in zip(rank_batch(0, step), rank_batch(1, step))]
        _, shared = mpo_step(*union, running=union_running)
    assert not torch.allclose(own["delta"], shared["delta"])
