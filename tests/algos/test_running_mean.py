"""RunningMean (δ of BCO): TRL RunningMoments semantics, checkpoint round trips, resume of the MPO loss."""

from __future__ import annotations

import io
import json

import pytest
import torch
from algos.mpo_step import mpo_step

from cascade_rl.algos import RunningMean


def test_cumulative_equal_weight_mean_not_an_ema():
    running = RunningMean()
    assert running.mean == 0 and running.count == 1e-24
    # After k updates δ is the plain average of the k values: 0.1, (0.1+0.4)/2, (0.1+0.4-0.2)/3.
    out = [running.update(torch.tensor(v)).clone() for v in (0.1, 0.4, -0.2)]
    torch.testing.assert_close(torch.stack(out), torch.tensor([0.1, 0.25, 0.1], dtype=torch.float64))
    assert running.count == pytest.approx(3.0)


def test_first_update_uses_trl_initial_count():
    # mean = 0 + (v - 0)·1/(1e-24 + 1): equal to v to double precision, no division by zero.
    running = RunningMean()
    torch.testing.assert_close(running.update(0.3), torch.tensor(0.3, dtype=torch.float64))


def test_update_is_detached_and_rejects_non_scalars():
    value = torch.tensor(0.5, requires_grad=True) * 2
    assert not RunningMean().update(value).requires_grad
    with pytest.raises(ValueError, match="one scalar"):
        RunningMean().update(torch.ones(2))


def test_state_dict_round_trip_through_torch_save_and_json():
    running = RunningMean()
    for v in (0.1, 0.4):
        running.update(v)
    buffer = io.BytesIO()
    torch.save(running.state_dict(), buffer)
    buffer.seek(0)
    restored = RunningMean()
    restored.load_state_dict(torch.load(buffer))
    as_json = json.loads(json.dumps({"mean": running.state_dict()["mean"].tolist(), "count": running.count}))
    from_json = RunningMean()
    from_json.load_state_dict(as_json)
    for state in (running, restored, from_json):
        state.update(-0.2)
    torch.testing.assert_close(restored.mean, running.mean, rtol=0, atol=0)
    torch.testing.assert_close(from_json.mean, running.mean, rtol=0, atol=0)
    assert restored.count == running.count == from_json.count


def test_load_state_dict_names_missing_keys():
    with pytest.raises(KeyError, match="count"):
        RunningMean().load_state_dict({"mean": 0.0})


def mpo_batch(step: int):
    gen = torch.Generator().manual_seed(step)
    sums = [-10 * torch.rand(3, generator=gen, dtype=torch.float64) for _ in range(4)]
    return (*sums, -torch.rand(3, 5, generator=gen, dtype=torch.float64), torch.ones(3, 5))


def test_resumed_mpo_losses_equal_uninterrupted_ones():
    uninterrupted = RunningMean()
    expected = [mpo_step(*mpo_batch(step), running=uninterrupted)[0] for step in range(4)]

    first = RunningMean()
    losses = [mpo_step(*mpo_batch(step), running=first)[0] for step in range(2)]
    checkpoint = first.state_dict()
    resumed = RunningMean()
    resumed.load_state_dict(checkpoint)
    losses += [mpo_step(*mpo_batch(step), running=resumed)[0] for step in range(2, 4)]
    torch.testing.assert_close(torch.stack(losses), torch.stack(expected), rtol=0, atol=0)

    fresh = RunningMean()  # forgetting δ on resume changes the loss: the state is not optional
    assert not torch.equal(mpo_step(*mpo_batch(2), running=fresh)[0], expected[2])
