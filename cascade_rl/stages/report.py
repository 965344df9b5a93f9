"""A run report: per-checkpoint held-out accuracy with its 95% Wilson interval, and PNG plots of the online reward
curve (with a moving average), the pass-rate histograms before and after the cascade, and the MPO loss components.

Numbers:
    Wilson 95% interval of an accuracy p̂ over n prompts (z = 1.96):
        centre = (p̂ + z²/2n) / (1 + z²/n),   half-width = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²)
    (it stays inside [0, 1] and is sound near 0 and 1, where the normal approximation p̂ ± z√(p̂(1 − p̂)/n) is not);
    moving average of a curve x: m_i = mean(x_{max(0, i−w+1)} … x_i), a trailing window of w points.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from cascade_rl.stages.cascade import CascadeConfig, stage_dir
from cascade_rl.train.metrics import read_metrics

Z95 = 1.959964  # the standard normal's 97.5% quantile
SMOOTHING = 9  # points in the reward curve's moving average (8 prompts a step: one step is noisy)


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a proportion `p` observed over `n` trials (module docstring)."""
    if n <= 0:
        return (0.0, 1.0)
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def moving_average(values: list[float], window: int = SMOOTHING) -> list[float]:
    """Trailing moving average: entry i is the mean of values[max(0, i − window + 1) : i + 1]."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def pass_rates(samples_path: str | Path) -> list[float]:
    """Per-prompt share of correct samples in an eval's `*.samples.jsonl` (sampled eval: n samples per prompt)."""
    counts = defaultdict(lambda: [0, 0])
    for sample in read_metrics(Path(samples_path)):
        counts[sample["prompt_id"]][0] += bool(sample["correct"])
        counts[sample["prompt_id"]][1] += 1
    return [correct / total for correct, total in counts.values()]


def reward_trend(config: CascadeConfig, window: int = SMOOTHING) -> dict | None:
    """The GSPO reward curve's moving average at its first and last full window: {"start", "end"}."""
    path = stage_dir(config, "gspo") / "metrics.jsonl"
    if not path.exists():
        return None
    smooth = moving_average([r["reward_mean"] for r in read_metrics(path)], window)
    return {"start": smooth[min(window, len(smooth)) - 1], "end": smooth[-1]}


def _plot(path: Path, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    draw(axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def reward_curve(config: CascadeConfig, out: Path) -> str | None:
    path = stage_dir(config, "gspo") / "metrics.jsonl"
    if not path.exists():
        return None
    rows = read_metrics(path)
    steps, rewards = [r["step"] for r in rows], [r["reward_mean"] for r in rows]

    def draw(ax):
        ax.plot(steps, rewards, marker=".", alpha=0.4, label="mean reward per step")
        ax.plot(steps, moving_average(rewards), linewidth=2, label=f"moving average ({SMOOTHING} steps)")
        ax.set(xlabel="GSPO step", title="Online stage: reward of the rollouts")
        ax.legend()

    return _plot(out / "reward_curve.png", draw)


def pass_rate_histogram(before: list[float], after: list[float], out: Path, what: str) -> str:
    """Two overlaid histograms of per-prompt pass rates: the SFT policy's and the cascade's final policy's."""

    def draw(ax):
        bins = [i / 10 for i in range(11)]
        ax.hist(before, bins=bins, alpha=0.5, edgecolor="black", label=f"after SFT (mean {_mean(before):.2f})")
        ax.hist(after, bins=bins, alpha=0.5, edgecolor="black", label=f"after the cascade (mean {_mean(after):.2f})")
        ax.set(xlabel=f"pass rate per prompt ({what})", ylabel="prompts", title="Pass rates before and after")
        ax.legend()

    return _plot(out / "pass_rates.png", draw)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def loss_components(config: CascadeConfig, out: Path) -> str | None:
    path = stage_dir(config, "mpo") / "metrics.jsonl"
    if not path.exists():
        return None
    rows = read_metrics(path)

    def draw(ax):
        for key in ("dpo_loss", "bco_loss", "lm_loss", "loss"):
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
        ax.set(xlabel="MPO step", title="Offline stage: MPO loss components")
        ax.legend()

    return _plot(out / "mpo_losses.png", draw)


def accuracy_intervals(config: CascadeConfig, accuracy: dict) -> dict:
    """label → {"accuracy", "n", "wilson95": [low, high]}, n read from each checkpoint's eval file."""
    out = {}
    for label, value in accuracy.items():
        n = json.loads((stage_dir(config, "eval") / f"{label}.json").read_text())["n"]
        out[label] = {"accuracy": value, "n": n, "wilson95": [round(b, 4) for b in wilson_interval(value, n)]}
    return out


def accuracy_table(intervals: dict, reward: dict) -> list[str]:
    """Markdown rows: checkpoint, held-out accuracy, its Wilson 95% interval, prompts, mean reward."""
    lines = [
        "| checkpoint | held-out accuracy | 95% interval (Wilson) | prompts | mean reward |",
        "|---|---|---|---|---|",
    ]
    for label, entry in intervals.items():
        (low, high), n = entry["wilson95"], entry["n"]
        lines.append(f"| {label} | {entry['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | {n} | {reward[label]:.3f} |")
    return lines


def write_report(config: CascadeConfig, summary: dict, path: Path, pass_rate_files: dict | None = None) -> Path:
    """Write `path` (markdown) and its plots beside it. `pass_rate_files`: {"before", "after": samples.jsonl of a
    sampled eval, "what": what the prompts and samples are}, for the pass-rate histogram."""
    out = path.parent
    plots = [reward_curve(config, out), loss_components(config, out)]
    if pass_rate_files:
        before, after = pass_rates(pass_rate_files["before"]), pass_rates(pass_rate_files["after"])
        plots.append(pass_rate_histogram(before, after, out, pass_rate_files["what"]))
    manifest = json.loads((config.run_dir / "manifest.json").read_text())
    table = accuracy_table(accuracy_intervals(config, summary["accuracy"]), summary["reward"])
    lines = [f"# Cascade RL run `{config.name}`", "", *table, ""]
    trend = reward_trend(config)
    if trend:
        lines += [
            f"Online reward, moving average over {SMOOTHING} steps: {trend['start']:.3f} at step {SMOOTHING}, "
            f"{trend['end']:.3f} at the last step.",
            "",
        ]
    lines += [f"Wall time: {summary.get('wall_s', '?')} s.", "", "## Stages", ""]
    lines += [
        f"- {name}: {entry['wall_s']} s, config {entry['config_hash']}, in `{entry['dir']}`"
        for name, entry in manifest["stages"].items()
        if entry.get("status") == "done"
    ]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots if p]
    path.write_text("\n".join(lines) + "\n")
    return path
