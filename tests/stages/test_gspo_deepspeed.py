"""GSPO under DeepSpeed through accelerate, on 2 CPU processes (DeepSpeed's CPU accelerator, gloo): under the shipped
ZeRO-2 and ZeRO-3 configs a run equals one plain process over the same prompts (rollouts are seeded per prompt and
sample, not per rank), a crashed ZeRO-3 run resumes onto the uninterrupted trajectory, and dynamic sampling keeps
the ranks balanced."""

import pytest

pytest.importorskip("deepspeed")

import torch.multiprocessing as mp  # noqa: E402
from stages.conftest import gspo_config  # noqa: E402
from stages.ddp_worker import CRASH_EXIT_CODE, deepspeed_env, gspo_rank_main, launch  # noqa: E402
from stages.test_deepspeed import ZERO2, ZERO3, assert_same_weights, free_port  # noqa: E402

from cascade_rl.data_tools.ledger import PassRateLedger  # noqa: E402
from cascade_rl.rewards.scoring import CorrectRule, RewardSpec  # noqa: E402
from cascade_rl.stages.gspo import run_gspo  # noqa: E402
from cascade_rl.train.metrics import read_metrics  # noqa: E402

# Every rank holds 2 of a step's 4 groups: the engine accumulates over them and steps once per mini-batch (the whole
# step here, so one process and two ranks update on the same 4 groups), twice per step (ppo_epochs=2).
SETTINGS = dict(prompts_per_step=4, mini_batch_prompts=4, ppo_epochs=2, save_steps=0)
# Rewards, losses and ratios are computed from the same rollouts and the same weights on both sides; what differs is
# float32 summation order (gradients reduced over two ranks, partition by partition), ~1e-7 relative per operation,
# which Adam's step (≤ lr = 1e-3 per weight and update, 4 updates) turns into weight gaps far below 2e-5.
COMPARED = ("reward_mean", "pass_rate", "completion_length", "loss", "clip_fraction", "ratio_mean", "grad_norm")


def assert_same_rows(rows_one, rows_two, keys=COMPARED):
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    for a, b in zip(rows_one, rows_two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)


def one_and_two_ranks(checkpoint, tmp_path, ds_config, settings) -> tuple[list, list]:
    """Metrics rows of the same 2-step run in one process (tmp_path/one) and on two DeepSpeed ranks (tmp_path/two)."""
    one = gspo_config(checkpoint, tmp_path / "one", optim={"max_steps": 2}, **settings)
    two = gspo_config(checkpoint, tmp_path / "two", optim={"max_steps": 2}, **settings)
    run_gspo(one)
    launch(gspo_rank_main, (2, free_port(), two, deepspeed_env(ds_config)))
    return read_metrics(tmp_path / "one/run/metrics.jsonl"), read_metrics(tmp_path / "two/run/metrics.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", [ZERO2, ZERO3], ids=["zero2", "zero3"])
def test_gspo_under_deepspeed_matches_one_process(tiny_checkpoint, tmp_path, ds_config):
    rows_one, rows_two = one_and_two_ranks(tiny_checkpoint, tmp_path, ds_config, SETTINGS)
    assert len(rows_one) == 2
    assert_same_rows(rows_one, rows_two)
    # The HF engine samples from its own whole copy under ZeRO-3, the gathered weights pushed into it after every
    # step: its log-probs agree with the trainer's as closely as one process's do.
    assert all(r["logprob_gap_engine_vs_trainer"] < 1e-3 for r in rows_two)
    assert [r["rollout_tokens"] for r in rows_two] == [r["rollout_tokens"] for r in rows_one]  # summed over ranks
    ledger_one = PassRateLedger.load(tmp_path / "one/run/ledger.json")
    ledger_two = PassRateLedger.load(tmp_path / "two/run/ledger.json")
    assert ledger_two.stats == ledger_one.stats and len(ledger_one.stats) == 8
    assert_same_weights(tmp_path / "one/run/final", tmp_path / "two/run/final")  # loaded by plain transformers


@pytest.mark.slow
def test_a_kl_reference_under_zero3_matches_one_process(tiny_checkpoint, tmp_path):
    """kl_coef > 0: under ZeRO-3 the reference is partitioned in a DeepSpeed engine of its own; its log-probs, and
    so the KL and the loss, equal those of one process's whole reference."""
    rows_one, rows_two = one_and_two_ranks(tiny_checkpoint, tmp_path, ZERO3, {**SETTINGS, "kl_coef": 0.5})
    assert_same_rows(rows_one, rows_two, keys=(*COMPARED, "kl"))
    # k3 ≥ 0, and 0 only where policy = reference (step 1's first update); by step 2 the policy has moved
    assert all(r["kl"] >= 0 for r in rows_one) and rows_one[1]["kl"] > 1e-7
    assert_same_weights(tmp_path / "one/run/final", tmp_path / "two/run/final")


@pytest.mark.slow
def test_gspo_under_zero3_resumes_the_uninterrupted_trajectory(tiny_checkpoint, tmp_path):
    # 8 prompts, 2 epochs: 4 steps of 4 prompts, 3 run. The crashed run dies right after logging step 2 (its state
    # saved after step 1), and resumes from step 1's engine partitions, scheduler, cursor and ledger.
    def run(name, crash_after_step=0):
        settings = {**SETTINGS, "save_steps": 1}
        cfg = gspo_config(tiny_checkpoint, tmp_path / name, optim={"max_steps": 3, "epochs": 2}, **settings)
        launch(gspo_rank_main, (2, free_port(), cfg, deepspeed_env(ZERO3), crash_after_step))

    run("straight")
    with pytest.raises(mp.ProcessExitedException, match=f"exit code {CRASH_EXIT_CODE}"):
        run("crash", crash_after_step=2)
    state = tmp_path / "crash/run/state"
    assert [p.name for p in state.glob("engine-*")] == ["engine-00000001"]
    run("crash")
    expected = read_metrics(tmp_path / "straight/run/metrics.jsonl")
    by_step = {r["step"]: r for r in read_metrics(tmp_path / "crash/run/metrics.jsonl")}  # step 2 logged twice
    assert sorted(by_step) == [1, 2, 3]
    assert_same_rows(expected, [by_step[r["step"]] for r in expected], keys=(*COMPARED, "lr", "rollout_tokens"))
    assert PassRateLedger.load(tmp_path / "crash/run/ledger.json").stats == (
        PassRateLedger.load(tmp_path / "straight/run/ledger.json").stats
    )
    assert_same_weights(tmp_path / "straight/run/final", tmp_path / "crash/run/final")


@pytest.mark.slow
def test_dynamic_sampling_under_zero3_keeps_the_ranks_balanced(tiny_checkpoint, tmp_path):
    # Prompt q_i's answer is i; groups of even answers all score 0 and are dropped. With seed 1 the prompt order is
    # q3 q6 q1 q5 q7 q0 q4 q2 (random.Random(1).shuffle, as `_prompt_order`). Step 1, two ranks wanting 2 groups each:
    # round 1 deals q3 q1 to rank 0 (both kept) and q6 q5 to rank 1 (q6 dropped); round 2 deals the one row rank 1
    # still wants, q7, to rank 1 (not to rank 0, which has its 2). Kept: q3 q1 | q5 q7, one zero-variance group.
    # One process keeps the same four (q3 q1 q5 of round 1, q7 of round 2), so the runs are equal. Step 2: q0 q4 q2
    # are left, all even, nothing is kept on any rank, and both runs stop.
    spec = RewardSpec("stages.easy_rewards:odd_answers_only")
    settings = dict(SETTINGS, seed=1, drop_zero_variance=True, rewards=[spec], correct=[CorrectRule(spec.name, 0.05)])
    rows_one, rows_two = one_and_two_ranks(tiny_checkpoint, tmp_path, ZERO3, settings)
    assert [(r["kept_groups"], r["zero_variance_groups"]) for r in rows_two] == [(4, 1)]  # summed over the ranks
    assert_same_rows(rows_one, rows_two, keys=(*COMPARED, "kept_groups", "zero_variance_groups"))
    ledger_one = PassRateLedger.load(tmp_path / "one/run/ledger.json")
    assert PassRateLedger.load(tmp_path / "two/run/ledger.json").stats == ledger_one.stats
    assert sorted(ledger_one.stats) == ["q1", "q3", "q5", "q6", "q7"]  # step 1's; step 2 kept nothing and stopped
    assert_same_weights(tmp_path / "one/run/final", tmp_path / "two/run/final")
