"""DeepSpeed ZeRO-2 through accelerate, on 2 CPU processes (DeepSpeed's CPU accelerator, gloo): the MPO and SFT
trainers under the shipped `recipes/deepspeed/zero2.json` train like one plain process over the same global batch,
gradient accumulation included."""

import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

import torch.multiprocessing as mp  # noqa: E402
from stages.ddp_worker import deepspeed_env, mpo_rank_main  # noqa: E402

from cascade_rl.models import load_policy  # noqa: E402
from cascade_rl.stages.metrics import read_metrics  # noqa: E402
from cascade_rl.stages.mpo import MPOConfig, run_mpo  # noqa: E402

ZERO2 = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed" / "zero2.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_weights(dir_one, dir_two):
    one, two = load_policy(dir_one)[0].state_dict(), load_policy(dir_two)[0].state_dict()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_mpo_under_zero2_with_accumulation_matches_one_process(tiny_checkpoint, pairs_file, tmp_path):
    path, images = pairs_file
    common = dict(
        model_path=str(tiny_checkpoint),
        pairs=str(path),
        image_root=str(images),
        lr=1e-3,
        warmup_ratio=0.0,
        max_tiles=4,
        max_steps=1,
        per_device_batch=1,
        grad_accum=2,
    )
    # The same global batch of 4 pairs in 2 micro-steps: one process scores pairs (2m, 2m + 1) in micro-step m, the
    # two DeepSpeed ranks one each (`micro_batch`), so δ sees the same all-reduced batches in the same order.
    run_mpo(MPOConfig(**{**common, "per_device_batch": 2}, out_dir=str(tmp_path / "one")))
    ds = MPOConfig(**common, out_dir=str(tmp_path / "ds"))
    mp.start_processes(
        mpo_rank_main, args=(2, free_port(), ds, deepspeed_env(ZERO2)), nprocs=2, start_method="spawn", join=True
    )
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "ds" / "metrics.jsonl")
    assert len(one) == len(two) == 1
    # Logged losses are rank 0's own micro-batch means; δ is all-reduced, so it is the global batch's.
    assert two[0]["delta"] == pytest.approx(one[0]["delta"], rel=1e-5, abs=1e-7)
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-4)  # DeepSpeed's own global norm
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "ds" / "final")
