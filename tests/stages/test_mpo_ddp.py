"""2 CPU processes under gloo train like one process over the same global batch (δ all-reduced)."""

import socket

import pytest
import torch
from stages.conftest import build, multi_rank_mpo_settings
from stages.ddp_worker import launch, mpo_rank_main

from cascade_rl.models import load_policy
from cascade_rl.stages.mpo import MPOConfig, run_mpo
from cascade_rl.train.metrics import read_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_checkpoint, pairs_file, tmp_path):
    common = multi_rank_mpo_settings(tiny_checkpoint, pairs_file, optim={"max_steps": 2})
    # One process, 2 pairs per micro-batch; two processes, 1 pair each: the same global batch of 2.
    # Chosen completions all have 13 tokens, so the LM token mean of one micro-batch of 2 equals the mean of
    # the two ranks' means (DDP averages gradients).
    run_mpo(build(MPOConfig, common, out_dir=str(tmp_path / "one"), optim={"per_device_batch": 2}))
    ddp = build(MPOConfig, common, out_dir=str(tmp_path / "two"), optim={"per_device_batch": 1})
    launch(mpo_rank_main, (2, free_port(), ddp))

    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert b["delta"] == pytest.approx(a["delta"], rel=1e-5, abs=1e-7)  # all-reduced: the global batch mean
    model_one = load_policy(tmp_path / "one" / "final")[0].state_dict()
    model_two = load_policy(tmp_path / "two" / "final")[0].state_dict()
    for name, value in model_one.items():
        torch.testing.assert_close(model_two[name], value, atol=2e-5, rtol=1e-4, msg=name)
