"""The Cascade RL ablation at toy scale: from one SFT checkpoint, Cascade (MPO → GSPO) against GSPO alone with the
same rollout budget, and MPO alone, over 3 seeds, on the demo task (recipes/demo/cascade.yaml, `make demo`).

InternVL3.5-8B (arXiv 2508.18265): SFT 53.6 → MPO 56.3 → Cascade 60.3, against GSPO alone for 2 epochs 58.2 at
about twice the GPU hours. Here:
- SFT: the demo's warm-up, run once (demo seed 0): every arm starts from that checkpoint.
- Per seed s (the cascade's `seed`: rollout sampling, pair order, MPO and GSPO data order and sampling):
  cascade   = rollout (384 train prompts × 8) → pairs → MPO → filter [0.2, 0.8] → GSPO (the demo recipe);
  mpo_only  = the same run's MPO checkpoint (MPO alone is the cascade's first half);
  gspo_only = GSPO from the SFT checkpoint on all 384 train prompts (no ledger to filter by), for as many steps
              as it takes to generate the cascade's rollouts (offline + online) of that seed, rounded up to a step.
- Budget unit: generated rollouts (completions sampled), whatever their length; the rollouts of both arms are
  about as long (a boxed count, ~8 tokens), so tokens would tell the same.
- Score: greedy accuracy on the demo's 480 held-out prompts.

Prints one row per seed, the table (mean ± std over seeds, std with ddof 1), and last a JSON line
{"cascade", "gspo_only", "mpo_only", "sft", "seeds", "budget"} (means; budget: rollouts per arm, mean over seeds).
Run: `.venv/bin/python benchmarks/cascade_ablation.py [--runs-dir runs/ablation]` (CPU, offline; about 4 minutes
on an idle 2-core machine). Finished stages are kept: a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from cascade_rl.config import load_config
from cascade_rl.demo import RECIPE, prepare
from cascade_rl.stages.cascade import CascadeConfig, run_cascade, stage_dir
from cascade_rl.train.metrics import read_metrics

SEEDS = (0, 1, 2)
ARMS = ("sft", "mpo_only", "gspo_only", "cascade")


def cascade_config(paths: dict, runs_dir: Path, name: str, seed: int, stages: list[str], *overrides: str):
    fixed = [f"{k}={v}" for k, v in paths.items()] + [f"runs_dir={runs_dir}", f"name={name}", f"seed={seed}"]
    return load_config(CascadeConfig, RECIPE, [*fixed, f"stages=[{','.join(stages)}]", *overrides])


def gspo_rollouts(config: CascadeConfig) -> int:
    """Rollouts the GSPO stage generated: steps run × prompts_per_step × sampling.n (no group is dropped here)."""
    section = config.gspo
    steps = len(read_metrics(stage_dir(config, "gspo") / "metrics.jsonl"))
    return steps * section["prompts_per_step"] * section["sampling"]["n"]


def run_seed(paths: dict, sft: str, runs_dir: Path, seed: int) -> dict:
    """One seed: the cascade (with MPO alone inside it), then GSPO alone on the same number of rollouts."""
    from_sft = {**paths, "model_path": sft}
    cascade = cascade_config(
        from_sft, runs_dir, f"cascade-{seed}", seed, ["rollout", "pairs", "mpo", "filter", "gspo", "eval"]
    )
    accuracy = run_cascade(cascade)["eval"]["accuracy"]
    offline = json.loads((stage_dir(cascade, "rollout") / "rollout_summary.json").read_text())["rollouts"]
    budget = offline + gspo_rollouts(cascade)
    per_step = cascade.gspo["prompts_per_step"] * cascade.gspo["sampling"]["n"]
    steps = math.ceil(budget / per_step)
    epochs = math.ceil(steps * cascade.gspo["prompts_per_step"] / _rows(paths["data.train"]))
    alone = cascade_config(
        from_sft,
        runs_dir,
        f"gspo-{seed}",
        seed,
        ["gspo", "eval"],
        f"gspo.optim.max_steps={steps}",
        f"gspo.optim.epochs={epochs}",
    )
    alone_accuracy = run_cascade(alone)["eval"]["accuracy"]
    return {
        "seed": seed,
        "sft": accuracy["base"],
        "mpo_only": accuracy["mpo"],
        "cascade": accuracy["gspo"],
        "gspo_only": alone_accuracy["gspo"],
        "budget": {"cascade": budget, "gspo_only": steps * per_step},
    }


def _rows(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def table(results: list[dict]) -> str:
    lines = ["| arm | held-out accuracy (mean ± std over seeds) | per seed |", "|---|---|---|"]
    for arm in ARMS:
        values = [r[arm] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {arm} | {statistics.mean(values):.3f} ± {spread:.3f} | {per_seed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/ablation")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs_dir)
    paths = prepare(runs_dir / "demo", seed=0)
    warmup = cascade_config(paths, runs_dir, "sft", 0, ["sft"])
    run_cascade(warmup)
    sft = str(stage_dir(warmup, "sft") / "final")
    results = []
    for seed in SEEDS:
        results.append(run_seed(paths, sft, runs_dir, seed))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    summary = {
        arm: round(statistics.mean(r[arm] for r in results), 4) for arm in ("cascade", "gspo_only", "mpo_only", "sft")
    }
    summary.update(seeds=len(results), budget=round(statistics.mean(r["budget"]["cascade"] for r in results)))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
