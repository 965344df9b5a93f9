"""GSPO stage on the tiny InternVL: a step updates the policy, rewards rise on an easy task, resume is exact."""

import hashlib
from collections import Counter

import pytest
import torch
from stages.conftest import gspo_config as config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cascade_rl.config import ConfigError, load_config
from cascade_rl.models import load_policy
from cascade_rl.rewards.scoring import CorrectRule, RewardSpec
from cascade_rl.stages.gspo import GSPOConfig, GSPOTrainer, run_gspo
from cascade_rl.train.metrics import read_metrics


def test_one_step_updates_the_policy_and_logs_the_metrics(tiny_checkpoint, tmp_path):
    with pytest.warns(UserWarning, match="clip"):
        cfg = config(tiny_checkpoint, tmp_path, optim={"max_steps": 1}, log_with=["tensorboard"])
    summary = run_gspo(cfg)
    (row,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    board = EventAccumulator(str(tmp_path / "run" / "trackers" / "cascade_rl_gspo"))
    board.Reload()
    for key in ("reward_mean", "clip_fraction", "logprob_gap_engine_vs_trainer", "lr"):
        ((event,),) = [board.Scalars(key)]
        assert event.step == 1 and event.value == pytest.approx(row[key], rel=1e-6), key
    for key in (
        "reward_mean",
        "reward_std",
        "pass_rate",
        "zero_variance_groups",
        "clip_fraction",
        "ratio_mean",
        "completion_length",
        "truncation_rate",
        "logprob_gap_engine_vs_trainer",
        "rollout_tokens_per_s",
        "update_tokens_per_s",
        "grad_norm",
        "lr",
    ):
        assert key in row, key
    # The HF engine samples with the trainer's own weights, so the two log-prob computations agree.
    assert row["logprob_gap_engine_vs_trainer"] < 1e-3
    # Old log-probs come from the policy before the first update: every ratio of the first mini-batch is 1.
    assert 0.9 < row["ratio_mean"] < 1.1
    trained, start = load_policy(summary["final"])[0], load_policy(tiny_checkpoint)[0]
    changed = {
        n for (n, a), b in zip(trained.state_dict().items(), start.state_dict().values()) if not torch.equal(a, b)
    }
    assert changed and not any("vision_tower" in n for n in changed)  # vision frozen, the rest trains


def test_a_step_encodes_and_tiles_each_prompt_once_with_the_hf_engine(tiny_checkpoint, tmp_path, monkeypatch):
    # HFEngine encodes each prompt (chat template, tokens, tiles) for sampling and hands it to the groups with
    # the rollouts; the trainer does not encode it again. One step: 4 prompts, each with its own image.
    from cascade_rl.models import chat

    renders, tilings = [], Counter()
    render, process_images = chat.render, chat.process_images

    def counted_render(processor, messages, **kw):
        renders.append(messages)
        return render(processor, messages, **kw)

    def counted_tiling(processor, images, **kw):
        tilings[tuple(hashlib.sha1(im.tobytes()).hexdigest() for im in images)] += 1
        return process_images(processor, images, **kw)

    monkeypatch.setattr(chat, "render", counted_render)
    monkeypatch.setattr(chat, "process_images", counted_tiling)
    cfg = config(tiny_checkpoint, tmp_path, optim={"max_steps": 1})
    run_gspo(cfg)
    assert len(renders) == cfg.prompts_per_step  # one encoding per prompt
    assert len(tilings) == cfg.prompts_per_step and set(tilings.values()) == {1}  # each prompt's image tiled once


@pytest.mark.slow  # a learning check: 10 GSPO steps
def test_mean_reward_rises_on_an_easy_task(tiny_checkpoint, tmp_path):
    # Reward: the share of vowels in the completion (about 0.25 for the untrained tiny policy, dense, and
    # reachable by shifting token probabilities). 10 steps of 4 prompts × 8 rollouts on a fixed seed.
    vowels = [RewardSpec("stages.easy_rewards:vowel_share")]
    cfg = config(
        tiny_checkpoint,
        tmp_path,
        optim={"max_steps": 10, "epochs": 10, "lr": 1e-2},
        sampling={"n": 8},
        seed=1,
        rewards=vowels,
        correct=[CorrectRule(vowels[0].name, 0.5)],
    )
    run_gspo(cfg)
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.03, rewards


def test_resume_reproduces_the_uninterrupted_run(tiny_checkpoint, tmp_path, monkeypatch):
    run_gspo(config(tiny_checkpoint, tmp_path / "a", optim={"max_steps": 3}))
    expected = read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    from cascade_rl.train import metrics as metrics_module

    original = metrics_module.MetricsLog.log

    def crash_at_2(self, step, values):
        out = original(self, step, values)
        if step == 2:
            raise KeyboardInterrupt("simulated crash")
        return out

    monkeypatch.setattr(metrics_module.MetricsLog, "log", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        run_gspo(config(tiny_checkpoint, tmp_path / "b", optim={"max_steps": 3}))
    monkeypatch.setattr(metrics_module.MetricsLog, "log", original)
    run_gspo(config(tiny_checkpoint, tmp_path / "b", optim={"max_steps": 3}))
    got = {r["step"]: r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")}
    for row in expected:
        for key in ("reward_mean", "loss", "ratio_mean", "grad_norm"):
            assert got[row["step"]][key] == pytest.approx(row[key], rel=1e-5, abs=1e-7), (row["step"], key)


def test_gspo_refuses_token_sum_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="token-sum"):
        load_config(GSPOConfig, {"model_path": "m", "prompts": "p", "aggregation": "token-sum"})
    with pytest.raises(ConfigError, match="sampling.n must be at least 2"):
        load_config(GSPOConfig, {"model_path": "m", "prompts": "p", "sampling": {"n": 1}})


def test_advantage_scale_none_gives_the_unscaled_advantages(tiny_checkpoint, tmp_path):
    # Dr.GRPO: Â = r - group mean, no division by the std. Vowel share gives dense rewards that differ in a group.
    vowels = [RewardSpec("stages.easy_rewards:vowel_share")]
    correct = [CorrectRule(vowels[0].name, 0.5)]
    cfg = config(tiny_checkpoint, tmp_path, advantage_scale="none", rewards=vowels, correct=correct)
    trainer = GSPOTrainer(cfg)
    groups, _, _ = trainer.collect(0, 0)
    trainer.runner.close()
    assert any(not g.zero_variance for g in groups)
    for group in groups:
        centered = group.rewards - group.rewards.mean()
        torch.testing.assert_close(group.advantages, centered)
        if not group.zero_variance:  # rewards in [0, 1]: std < 1, so the default scale would differ
            assert not torch.allclose(group.advantages, centered / (group.rewards.std() + 1e-6))


def test_kl_penalty_and_is_correction_run_through_the_algos_functions(tiny_checkpoint, tmp_path):
    # The reference is the starting policy and the HF engine samples with the trainer's weights: the KL starts at
    # 0 (k3 ≥ 0) and stays tiny after one update; the IS weights are about 1, so the step trains normally.
    cfg = config(tiny_checkpoint, tmp_path, optim={"max_steps": 1}, kl_coef=0.1, is_correction="sequence", is_cap=2.0)
    run_gspo(cfg)
    (row,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert 0.0 <= row["kl"] < 1e-2
    assert 0.9 < row["ratio_mean"] < 1.1 and row["grad_norm"] > 0


def test_gspo_refuses_unknown_or_ignored_advantage_settings():
    base = {"model_path": "m", "prompts": "p"}
    with pytest.raises(ConfigError, match="scale 'std' is unknown; valid: group, batch, none"):
        load_config(GSPOConfig, {**base, "advantage_scale": "std"})
    with pytest.raises(ConfigError, match="eps=-1.0 must be > 0"):
        load_config(GSPOConfig, {**base, "advantage_eps": -1.0})
    with pytest.raises(ConfigError, match="'rloo' takes no scale"):
        load_config(GSPOConfig, {**base, "advantage": "rloo", "advantage_scale": "none"})


@pytest.mark.parametrize("transport", ["http", "gloo"])
def test_dedicated_server_mode_pushes_weights_every_step(tiny_checkpoint, tmp_path, transport):
    from cascade_rl.rollout import HFEngine
    from cascade_rl.rollout.server import RolloutServer

    served_model, processor = load_policy(tiny_checkpoint)
    server = RolloutServer(HFEngine(served_model.eval(), processor, max_tiles=4), served_model, port=0)
    server.start_in_thread()
    try:
        cfg = config(
            tiny_checkpoint,
            tmp_path,
            optim={"max_steps": 2},
            engine="hf-server",
            server={"urls": [server.url], "weight_transport": transport},
        )
        summary = run_gspo(cfg)
    finally:
        server.shutdown()
    assert server.weights_version == 3  # the starting weights (a server may hold another run's), then one per step
    trained = load_policy(summary["final"])[0].state_dict()
    for name, value in served_model.state_dict().items():
        assert torch.equal(value, trained[name]), name
