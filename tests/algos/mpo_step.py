"""The MPO stage's per-micro-batch order, for the loss tests: fold the batch's mean reward into δ, then the loss."""

from __future__ import annotations

import torch

from cascade_rl.algos import RunningMean, mean_implicit_reward, mpo_loss


def mpo_step(*tensors: torch.Tensor, running: RunningMean, beta: float = 0.1, **kwargs):
    """`mpo_loss` on `tensors` with δ = `running` after this batch's `mean_implicit_reward` (as stages/mpo.py)."""
    delta = running.update(mean_implicit_reward(*tensors[:4], beta=beta))
    return mpo_loss(*tensors, delta=delta, beta=beta, **kwargs)
