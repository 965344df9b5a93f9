"""The run report: Wilson intervals (golden values worked out by hand), the moving average, per-prompt pass rates
from a sampled eval, and a report written from a run directory's files (no model runs)."""

import json

import pytest

from cascade_rl.config import load_config
from cascade_rl.stages.cascade import CascadeConfig, stage_dir
from cascade_rl.stages.report import moving_average, pass_rates, reward_trend, wilson_interval, write_report


def test_wilson_interval_golden_values():
    # p = 0.5, n = 100, z = 1.96: z²/n = 0.038415; centre = (0.5 + 0.0192075) / 1.038415 = 0.5;
    # half = 1.96 / 1.038415 · √(0.0025 + 3.8415/40000) = 1.88749 · 0.050951 = 0.096170 → [0.40383, 0.59617].
    assert wilson_interval(0.5, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    # p = 0, n = 10: centre = (3.8415/20) / 1.38415 = 0.138768 = half (√(3.8415/400) · 1.96 / 1.38415): [0, 0.27754]
    # (the textbook "0 of 10" Wilson bound), where the normal approximation would give [0, 0].
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    low, high = wilson_interval(0.9, 480)
    assert low < 0.9 < high and high - low < 2 * 1.96 * (0.9 * 0.1 / 480) ** 0.5 + 1e-3


def test_moving_average_is_trailing():
    # windows of 3: [1], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]
    assert moving_average([1, 2, 3, 4, 5, 6], 3) == [1, 1.5, 2, 3, 4, 5]


def test_pass_rates_group_samples_by_prompt(tmp_path):
    path = tmp_path / "s.samples.jsonl"
    flags = {"a": [1, 1, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 1, 0]}
    path.write_text(
        "".join(json.dumps({"prompt_id": p, "correct": bool(c)}) + "\n" for p, f in flags.items() for c in f)
    )
    assert pass_rates(path) == [0.5, 0.0, 0.75]


def fake_run(tmp_path) -> CascadeConfig:
    """A finished run's files: eval results for sft and gspo, 10 GSPO steps of rising reward, 3 MPO steps."""
    data = {"train": "t.jsonl", "heldout": "h.jsonl", "sft": "s.jsonl"}
    config = load_config(CascadeConfig, {"name": "r", "runs_dir": str(tmp_path), "model_path": "/m", "data": data})
    evals, gspo, mpo = (stage_dir(config, s) for s in ("eval", "gspo", "mpo"))
    for directory in (evals, gspo, mpo):
        directory.mkdir(parents=True)
    (evals / "sft.json").write_text(json.dumps({"n": 100, "accuracy": 0.5}))
    (evals / "gspo.json").write_text(json.dumps({"n": 100, "accuracy": 0.8}))
    rewards = [0.4, 0.5, 0.45, 0.5, 0.5, 0.6, 0.7, 0.65, 0.7, 0.8]
    rows = [{"step": i + 1, "reward_mean": r, "pass_rate": r} for i, r in enumerate(rewards)]
    (gspo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loss = {"dpo_loss": 0.69, "bco_loss": 1.38, "lm_loss": 0.3, "loss": 1.1}
    (mpo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, **loss}) + "\n" for s in (1, 2, 3)))
    manifest = {"stages": {"gspo": {"status": "done", "wall_s": 1.0, "config_hash": "h", "dir": str(gspo)}}}
    (config.run_dir / "manifest.json").write_text(json.dumps(manifest))
    return config


def test_the_report_shows_intervals_the_smoothed_reward_and_both_histograms(tmp_path):
    config = fake_run(tmp_path)
    before, after = tmp_path / "before.samples.jsonl", tmp_path / "after.samples.jsonl"
    before.write_text("".join(json.dumps({"prompt_id": str(i // 2), "correct": i % 2 == 0}) + "\n" for i in range(8)))
    after.write_text("".join(json.dumps({"prompt_id": str(i // 2), "correct": True}) + "\n" for i in range(8)))
    summary = {"accuracy": {"sft": 0.5, "gspo": 0.8}, "reward": {"sft": 0.5, "gspo": 0.8}, "wall_s": 3}
    files = {"before": before, "after": after, "what": "4 prompts"}
    (tmp_path / "out").mkdir()
    text = write_report(config, summary, tmp_path / "out" / "report.md", files).read_text()
    # 0.8 of 100: z²/n = 0.038415, centre = 0.819208 / 1.038415 = 0.788898, half = 1.88749 · √(0.0016 + 0.000096)
    # = 0.077727 → [0.711, 0.867].
    assert "| gspo | 0.800 | [0.711, 0.867] | 100 | 0.800 |" in text
    assert "| sft | 0.500 | [0.404, 0.596] | 100 | 0.500 |" in text
    # Moving average over SMOOTHING = 9 steps: at step 9 mean(0.4 … 0.7) = 5.0 / 9 = 0.5556; at step 10
    # mean(0.5 … 0.8) = (5.0 − 0.4 + 0.8) / 9 = 0.6. Over 5 steps: 0.47 at step 5, mean(0.6 … 0.8) = 0.69 at step 10.
    assert reward_trend(config) == pytest.approx({"start": 5.0 / 9, "end": 0.6})
    assert reward_trend(config, window=5) == pytest.approx({"start": 0.47, "end": 0.69})
    assert "0.556 at step 9, 0.600 at the last step" in text
    for png in ("reward_curve.png", "mpo_losses.png", "pass_rates.png"):
        assert (tmp_path / "out" / png).stat().st_size > 0 and f"![{png}]({png})" in text
