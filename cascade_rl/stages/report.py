"""A run report: the accuracy/reward table, and PNG plots of the reward curve, pass rates and loss components."""

from __future__ import annotations

import json
from pathlib import Path

from cascade_rl.stages.cascade import CascadeConfig, stage_dir
from cascade_rl.train.metrics import read_metrics


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

    def draw(ax):
        ax.plot([r["step"] for r in rows], [r["reward_mean"] for r in rows], marker="o", label="mean reward")
        ax.plot([r["step"] for r in rows], [r["pass_rate"] for r in rows], marker=".", label="pass rate")
        ax.set(xlabel="GSPO step", title="Online stage: reward of the rollouts")
        ax.legend()

    return _plot(out / "reward_curve.png", draw)


def pass_rate_histogram(config: CascadeConfig, out: Path) -> str | None:
    path = stage_dir(config, "rollout") / "ledger.json"
    if not path.exists():
        return None
    from cascade_rl.data_tools.ledger import PassRateLedger

    rates = [s.pass_rate for s in PassRateLedger.load(path).stats.values()]
    low, high = config.filter.get("low", 0.2), config.filter.get("high", 0.8)

    def draw(ax):
        ax.hist(rates, bins=10, range=(0, 1), edgecolor="black")
        ax.axvspan(low, high, alpha=0.15, color="green", label=f"kept for GSPO [{low}, {high}]")
        ax.set(xlabel="pass rate per prompt (offline rollouts)", ylabel="prompts", title="Pass-rate ledger")
        ax.legend()

    return _plot(out / "pass_rates.png", draw)


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


def write_report(config: CascadeConfig, summary: dict, path: Path) -> Path:
    out = path.parent
    plots = [
        p for p in (reward_curve(config, out), pass_rate_histogram(config, out), loss_components(config, out)) if p
    ]
    manifest = json.loads((config.run_dir / "manifest.json").read_text())
    lines = [
        f"# Cascade RL run `{config.name}`",
        "",
        "| checkpoint | held-out accuracy | mean reward |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {a:.3f} | {summary['reward'][k]:.3f} |" for k, a in summary["accuracy"].items()]
    lines += ["", f"Wall time: {summary.get('wall_s', '?')} s.", "", "## Stages", ""]
    lines += [
        f"- {name}: {entry['wall_s']} s, config {entry['config_hash']}, in `{entry['dir']}`"
        for name, entry in manifest["stages"].items()
        if entry.get("status") == "done"
    ]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")
    return path
