"""GSPO on 2 CPU processes under gloo: each rank samples half of a step's prompts, DDP averages the gradients, and
the run equals one process over the same prompts (rollouts are seeded per prompt and sample, not per rank)."""

import socket

import pytest
import torch
from stages.ddp_worker import gspo_rank_main, launch
from stages.test_gspo import config

from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.models import load_policy
from cascade_rl.stages.gspo import run_gspo
from cascade_rl.train.metrics import read_metrics
from cascade_rl.train.ranks import check_ranks, deal_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_checkpoint, tmp_path):
    # One mini-batch per step (mini_batch_prompts = prompts_per_step), so both runs update on the same 4 groups.
    settings = dict(
        optim={"max_steps": 2}, prompts_per_step=4, mini_batch_prompts=4, drop_zero_variance=False, save_steps=0
    )
    one = config(tiny_checkpoint, tmp_path / "one", **settings)
    two = config(tiny_checkpoint, tmp_path / "two", **settings)
    run_gspo(one)
    launch(gspo_rank_main, (2, free_port(), two))
    rows_one, rows_two = (
        read_metrics(tmp_path / "one/run/metrics.jsonl"),
        read_metrics(tmp_path / "two/run/metrics.jsonl"),
    )
    assert len(rows_one) == len(rows_two) == 2
    for a, b in zip(rows_one, rows_two):
        for key in ("reward_mean", "pass_rate", "completion_length", "loss", "clip_fraction"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
        assert b["rollout_tokens"] == a["rollout_tokens"]  # summed over the ranks
    ledger_one = PassRateLedger.load(tmp_path / "one/run/ledger.json")
    ledger_two = PassRateLedger.load(tmp_path / "two/run/ledger.json")
    assert ledger_two.stats.keys() == ledger_one.stats.keys() and len(ledger_one.stats) == 8
    model_one = load_policy(tmp_path / "one/run/final")[0].state_dict()
    model_two = load_policy(tmp_path / "two/run/final")[0].state_dict()
    for name, value in model_one.items():
        torch.testing.assert_close(model_two[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_settings_that_would_unbalance_the_ranks_are_refused(tiny_checkpoint, tmp_path):
    cfg = config(tiny_checkpoint, tmp_path, prompts_per_step=6, mini_batch_prompts=3, drop_zero_variance=False)
    with pytest.raises(ValueError, match="mini_batch_prompts=3 must be a multiple of the 2 processes"):
        check_ranks(cfg, 2)
    with pytest.raises(ValueError, match="takes weights from one trainer process; use engine=server"):
        check_ranks(config(tiny_checkpoint, tmp_path, engine="hf-server"), 2)
    check_ranks(config(tiny_checkpoint, tmp_path, engine="server"), 2)  # vLLM servers: every rank samples
    check_ranks(config(tiny_checkpoint, tmp_path, drop_zero_variance=True), 2)  # refills are dealt to balance
    check_ranks(cfg, 1)  # one process: anything goes


def test_refills_go_to_the_ranks_still_short():
    rows = list("abcdefg")
    # Equal wants: every world-th row, as without refills.
    assert [deal_rows(rows, [2, 2], r) for r in (0, 1)] == [["a", "c"], ["b", "d"]]
    # Rank 0 has its groups: rank 1 takes the rows it wants, nobody the rest.
    assert [deal_rows(rows, [0, 2], r) for r in (0, 1)] == [[], ["a", "b"]]
    # Rank 0 wants 1, rank 2 wants 3: a → 0, b → 2 (rank 1 wants none), then only rank 2 is short.
    assert [deal_rows(rows, [1, 0, 3], r) for r in (0, 1, 2)] == [["a"], [], ["b", "c", "d"]]
    # Fewer rows than wanted (the end of the data): dealt as far as they go.
    assert [deal_rows(rows[:3], [2, 2], r) for r in (0, 1)] == [["a", "c"], ["b"]]
