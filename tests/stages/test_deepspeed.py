"""DeepSpeed through accelerate, on 2 CPU processes (DeepSpeed's CPU accelerator, gloo): MPO under the shipped
ZeRO-2 and ZeRO-3 configs, and SFT under ZeRO-2, train like one plain process over the same global batch (gradient
accumulation included), and a crashed DeepSpeed run resumes onto the uninterrupted trajectory."""

import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

import torch.multiprocessing as mp  # noqa: E402
from stages.conftest import build, multi_rank_mpo_settings  # noqa: E402
from stages.ddp_worker import CRASH_EXIT_CODE, deepspeed_env, launch, mpo_rank_main  # noqa: E402

from cascade_rl.models import load_policy  # noqa: E402
from cascade_rl.stages.mpo import MPOConfig, run_mpo  # noqa: E402
from cascade_rl.stages.sft import SFTConfig, run_sft  # noqa: E402
from cascade_rl.train.metrics import read_metrics  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed"
ZERO2, ZERO3 = RECIPES / "zero2.json", RECIPES / "zero3.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_weights(dir_one, dir_two):
    one, two = load_policy(dir_one)[0].state_dict(), load_policy(dir_two)[0].state_dict()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", [ZERO2, ZERO3], ids=["zero2", "zero3"])
def test_mpo_under_deepspeed_with_accumulation_matches_one_process(tiny_checkpoint, pairs_file, tmp_path, ds_config):
    common = multi_rank_mpo_settings(
        tiny_checkpoint, pairs_file, optim={"max_steps": 1, "per_device_batch": 1, "grad_accum": 2}
    )
    # The same global batch of 4 pairs in 2 micro-steps: one process scores pairs (2m, 2m + 1) in micro-step m, the
    # two DeepSpeed ranks one each (`micro_batch`), so δ sees the same all-reduced batches in the same order.
    run_mpo(build(MPOConfig, common, optim={"per_device_batch": 2}, out_dir=str(tmp_path / "one")))
    ds = build(MPOConfig, common, out_dir=str(tmp_path / "ds"))
    launch(mpo_rank_main, (2, free_port(), ds, deepspeed_env(ds_config)))
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "ds" / "metrics.jsonl")
    assert len(one) == len(two) == 1
    # Logged losses are rank 0's own micro-batch means; δ is all-reduced, so it is the global batch's.
    assert two[0]["delta"] == pytest.approx(one[0]["delta"], rel=1e-5, abs=1e-7)
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-4)  # DeepSpeed's own global norm
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "ds" / "final")


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", [ZERO2, ZERO3], ids=["zero2", "zero3"])
def test_mpo_under_deepspeed_resumes_the_uninterrupted_trajectory(tiny_checkpoint, pairs_file, tmp_path, ds_config):
    common = multi_rank_mpo_settings(tiny_checkpoint, pairs_file, optim={"max_steps": 3, "per_device_batch": 1})

    def run(out, crash_after_step=0):
        cfg = build(MPOConfig, common, out_dir=str(out), save_steps=1)
        launch(mpo_rank_main, (2, free_port(), cfg, deepspeed_env(ds_config), crash_after_step))

    run(tmp_path / "straight")
    with pytest.raises(mp.ProcessExitedException, match=f"exit code {CRASH_EXIT_CODE}"):
        run(tmp_path / "crash", crash_after_step=2)
    assert [p.name for p in (tmp_path / "crash" / "state").glob("engine-*")] == ["engine-00000001"]
    run(tmp_path / "crash")  # resumes from the engine state saved after step 1
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    by_step = {r["step"]: r for r in read_metrics(tmp_path / "crash" / "metrics.jsonl")}
    assert sorted(by_step) == [1, 2, 3]
    for row in expected:
        for key in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta", "lr", "grad_norm"):
            assert by_step[row["step"]][key] == pytest.approx(row[key], rel=1e-5, abs=1e-7), (row["step"], key)
    assert_same_weights(tmp_path / "straight" / "final", tmp_path / "crash" / "final")


@pytest.mark.slow
def test_sft_under_zero2_with_accumulation_matches_one_process(tiny_checkpoint, tmp_path):
    from stages.sft_ddp_worker import sft_rank_main

    from cascade_rl.data_tools.synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(tmp_path / "data", 8, seed=0, split_name="train")
    common = dict(
        model_path=str(tiny_checkpoint),
        data=str(summary["path"]),
        image_root=str(tmp_path / "data"),
        optim={"lr": 1e-3, "warmup_ratio": 0.0, "max_steps": 2, "grad_accum": 2},
        max_tiles=1,
    )
    # Global batch 4 per step: one process 2 rows × 2 micro-steps, two ranks 1 row × 2 micro-steps. Replies differ
    # in length (count ~8 tokens, locate ~28): the loss is the global token mean either way.
    run_sft(build(SFTConfig, common, optim={"per_device_batch": 2}, out_dir=str(tmp_path / "one")))
    ds = build(SFTConfig, common, optim={"per_device_batch": 1}, out_dir=str(tmp_path / "ds"))
    launch(sft_rank_main, (2, free_port(), ds, deepspeed_env(ZERO2)))
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "ds" / "metrics.jsonl")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "ds" / "final")


@pytest.mark.slow
def test_mpo_under_zero3_with_text_only_pairs_matches_one_process(tiny_checkpoint, tmp_path):
    from stages.conftest import write_pairs

    # Pairs 1 and 2 have no image: in each micro-step one rank scores an image pair while the other scores a
    # text-only one, and the ranks still make the same module calls (the vision tower runs idle on a blank tile).
    pairs = write_pairs(tmp_path, text_only=(1, 2))
    common = multi_rank_mpo_settings(
        tiny_checkpoint, pairs, optim={"max_steps": 1, "per_device_batch": 1, "grad_accum": 2}
    )
    run_mpo(build(MPOConfig, common, optim={"per_device_batch": 2}, out_dir=str(tmp_path / "one")))
    ds = build(MPOConfig, common, out_dir=str(tmp_path / "ds"))
    launch(mpo_rank_main, (2, free_port(), ds, deepspeed_env(ZERO3)), timeout_s=120)
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "ds" / "metrics.jsonl")
    assert two[0]["delta"] == pytest.approx(one[0]["delta"], rel=1e-5, abs=1e-7)
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "ds" / "final")
