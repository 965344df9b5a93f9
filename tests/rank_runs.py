"""The check shared by the vLLM tests that compare a GSPO run on two ranks with the same run in one process."""

import pytest
import torch

from cascade_rl.models import load_policy
from cascade_rl.train.metrics import read_metrics

# Rollouts are seeded per prompt and sample, so both runs sample the same completions; what differs is float32
# summation order over the ranks (~1e-7 relative per operation), far inside these tolerances.
COMPARED = ("reward_mean", "completion_length", "loss", "logprob_gap_engine_vs_trainer")


def assert_two_ranks_equal_one(one, two, steps: int = 2) -> None:
    """The run directories `one` (one process) and `two` (two ranks): the same metrics per step, the rollout tokens
    summed over the ranks, and final weights within 2e-5."""
    rows_one, rows_two = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == list(range(1, steps + 1))
    for a, b in zip(rows_one, rows_two):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
        assert b["rollout_tokens"] == a["rollout_tokens"]
    final_one = load_policy(one / "final")[0].state_dict()
    final_two = load_policy(two / "final")[0].state_dict()
    for name, value in final_one.items():
        torch.testing.assert_close(final_two[name], value, atol=2e-5, rtol=1e-4, msg=name)
