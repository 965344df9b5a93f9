"""The losses on a CUDA device give the CPU values, and δ follows the values onto the device."""

from __future__ import annotations

import pytest
import torch
from algos.mpo_step import mpo_step

from cascade_rl.algos import RunningMean, grpo_loss, gspo_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_policy_losses_on_cuda_match_cpu():
    gen = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 5, generator=gen)
    old = logps + 1e-3 * torch.randn(4, 5, generator=gen)
    adv, mask = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, 5)
    for fn in (gspo_loss, grpo_loss):
        cpu_loss, cpu_metrics = fn(logps, old, adv, mask)
        gpu_loss, gpu_metrics = fn(logps.cuda(), old.cuda(), adv.cuda(), mask.cuda())
        assert gpu_loss.device.type == "cuda"
        torch.testing.assert_close(gpu_loss.cpu(), cpu_loss)
        for key, value in cpu_metrics.items():
            torch.testing.assert_close(gpu_metrics[key].cpu(), value)


def test_mpo_delta_lives_on_the_device_and_checkpoints_to_cpu():
    gen = torch.Generator().manual_seed(1)
    sums = [-10 * torch.rand(3, generator=gen) for _ in range(4)]
    args = [*sums, -torch.rand(3, 4, generator=gen), torch.ones(3, 4)]
    cpu_running, gpu_running = RunningMean(), RunningMean()
    cpu_loss, _ = mpo_step(*args, running=cpu_running)
    gpu_loss, metrics = mpo_step(*[a.cuda() for a in args], running=gpu_running)
    assert gpu_running.mean.device.type == "cuda" and metrics["delta"].device.type == "cuda"
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss)
    assert gpu_running.state_dict()["mean"].device.type == "cpu"
    torch.testing.assert_close(gpu_running.state_dict()["mean"], cpu_running.state_dict()["mean"])
