"""MPO stage driven as a user would: from a checkpoint directory and an MMPR pairs file."""

import math

import pytest
import torch

from cascade_rl.data import DataError
from cascade_rl.models import load_policy
from cascade_rl.stages.metrics import read_metrics
from cascade_rl.stages.mpo import MPOConfig, run_mpo


def config(tiny_checkpoint, pairs_file, out, **kw):
    path, images = pairs_file
    base = dict(
        model_path=str(tiny_checkpoint),
        pairs=str(path),
        image_root=str(images),
        out_dir=str(out),
        lr=1e-3,
        warmup_ratio=0.0,
        max_tiles=4,
        per_device_batch=2,
        grad_accum=1,
    )
    return MPOConfig(**{**base, **kw})


def test_first_step_losses_and_a_loadable_checkpoint(tiny_checkpoint, pairs_file, tmp_path):
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "run", max_steps=3))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    first = rows[0]
    # Step 1: the policy is the reference, so h_c = h_r = 0: DPO = -log σ(0) = ln 2, δ = 0 and
    # BCO = -log σ(0) - log σ(0) = 2 ln 2, reward accuracy 0 (no pair has β·h_c > β·h_r).
    assert first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["bco_loss"] == pytest.approx(2 * math.log(2), abs=1e-5)
    assert first["delta"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(0.8 * math.log(2) + 0.2 * 2 * math.log(2) + first["lm_loss"], abs=1e-5)
    assert rows[-1]["dpo_loss"] < math.log(2)  # the policy moved toward the chosen answers
    assert {"grad_norm", "lr", "tokens_per_s", "reward_accuracy", "reward_margin"} <= set(first)
    trained, _ = load_policy(summary["final"])
    start, _ = load_policy(tiny_checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


def test_resume_reproduces_the_uninterrupted_trajectory(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    straight = config(tiny_checkpoint, pairs_file, tmp_path / "straight", max_steps=3, per_device_batch=1)
    run_mpo(straight)
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")

    crashing = config(tiny_checkpoint, pairs_file, tmp_path / "crash", max_steps=3, per_device_batch=1, save_steps=1)
    from cascade_rl.stages import metrics as metrics_module

    original = metrics_module.MetricsLog.log

    def log_then_crash(self, step, values):
        out = original(self, step, values)
        if step == 2:
            raise KeyboardInterrupt("simulated crash after step 2")
        return out

    monkeypatch.setattr(metrics_module.MetricsLog, "log", log_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_mpo(crashing)
    monkeypatch.setattr(metrics_module.MetricsLog, "log", original)
    run_mpo(crashing)  # resumes from the state saved after step 1
    resumed = read_metrics(tmp_path / "crash" / "metrics.jsonl")
    by_step = {r["step"]: r for r in resumed}  # step 2 was logged twice: before the crash and after the resume
    assert sorted(by_step) == [1, 2, 3]
    for row in expected:
        for key in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta", "lr"):
            assert by_step[row["step"]][key] == pytest.approx(row[key], rel=1e-5, abs=1e-7), (row["step"], key)


def test_reference_cache_is_reused(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    cfg = config(tiny_checkpoint, pairs_file, tmp_path / "run", max_steps=1)
    run_mpo(cfg)
    caches = list((tmp_path / "run").glob("reference_logps-*.pt"))
    assert len(caches) == 1
    from cascade_rl.stages import reference

    def forbidden(*args, **kwargs):
        raise AssertionError("reference log-probs recomputed although the cache matches")

    monkeypatch.setattr(reference, "sequence_logps", forbidden)
    (tmp_path / "run" / "state").mkdir(exist_ok=True)
    run_mpo(MPOConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "run")}))


def test_live_reference_trains_like_precomputed(tiny_checkpoint, pairs_file, tmp_path):
    run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "pre", max_steps=2))
    run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "live", max_steps=2, reference="live"))
    pre, live = read_metrics(tmp_path / "pre" / "metrics.jsonl"), read_metrics(tmp_path / "live" / "metrics.jsonl")
    for a, b in zip(pre, live):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_overlong_pairs_are_dropped_and_counted_or_refused(tiny_checkpoint, pairs_file, tmp_path):
    # Odd rows have 128×64 images: 2 tiles + thumbnail = 48 image tokens, plus <img>, </img> and the chat
    # scaffolding (≥ 14 tokens), so their prompts alone exceed 64. Even rows (64×64, 1 tile = 16 image tokens)
    # total at most 62 tokens with their longest completion.
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "drop", max_steps=1, max_length=64))
    assert summary["pairs"]["dropped_overlong"] == 3 and summary["pairs"]["kept"] == 3
    with pytest.raises(DataError, match=r"pairs.jsonl line 2: pair is \d+ tokens, over max_length=64"):
        run_mpo(
            config(tiny_checkpoint, pairs_file, tmp_path / "raise", max_steps=1, max_length=64, on_overlong="raise")
        )


def test_frozen_vision_stays_put(tiny_checkpoint, pairs_file, tmp_path):
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "run", max_steps=2, freeze_vision=True))
    trained, start = load_policy(summary["final"])[0], load_policy(tiny_checkpoint)[0]
    for (name, a), b in zip(trained.state_dict().items(), start.state_dict().values()):
        assert torch.equal(a, b) == ("vision_tower" in name), name


def test_lora_checkpoint_is_merged_plain_weights(tiny_checkpoint, pairs_file, tmp_path):
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "run", max_steps=2, lora_rank=4))
    trained, start = load_policy(summary["final"])[0], load_policy(tiny_checkpoint)[0]
    assert trained.state_dict().keys() == start.state_dict().keys()  # no lora_ keys left
    changed = {
        n for (n, a), b in zip(trained.state_dict().items(), start.state_dict().values()) if not torch.equal(a, b)
    }
    assert changed and all("language_model" in n and "proj" in n for n in changed)


def test_cli_runs_mpo_from_yaml_with_overrides(tiny_checkpoint, pairs_file, tmp_path, capsys):
    from cascade_rl.cli import main

    path, images = pairs_file
    recipe = tmp_path / "mpo.yaml"
    recipe.write_text(f"model_path: {tiny_checkpoint}\npairs: {path}\nimage_root: {images}\nmax_tiles: 4\n")
    assert main(["mpo", str(recipe), f"out_dir={tmp_path / 'run'}", "max_steps=1", "lr=1e-3"]) == 0
    assert '"steps_run": 1' in capsys.readouterr().out
    assert main(["mpo", str(recipe), "betta=0.2"]) == 2
    assert "unknown key 'betta'" in capsys.readouterr().err
