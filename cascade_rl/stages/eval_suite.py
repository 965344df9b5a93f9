"""The cascade's eval stage: the same held-out evaluation for each checkpoint of the lineage (sft, mpo, gspo)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cascade_rl.config import ConfigError, from_dict
from cascade_rl.data.io import atomic_write_json
from cascade_rl.stages.evaluate import EvalConfig, run_eval


@dataclass(frozen=True)
class EvalSuite:
    """checkpoints: label → checkpoint directory; settings: EvalConfig keys shared by every evaluation."""

    checkpoints: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    out_dir: str = ""

    def __post_init__(self):
        for label in self.checkpoints:
            self.eval_config(label)  # unknown or bad eval keys fail here, before any model is loaded

    def eval_config(self, label: str) -> EvalConfig:
        values = {
            **self.settings,
            "model_path": self.checkpoints[label],
            "out": str(Path(self.out_dir) / f"{label}.json"),
        }
        try:
            return from_dict(EvalConfig, values)
        except ConfigError as err:
            raise ValueError(f"eval: {err}") from err


def run_evals(suite: EvalSuite) -> dict:
    """Evaluate each checkpoint (skipping those already evaluated); writes summary.json:
    {"accuracy": {label: a}, "reward": {label: r}, "per_reward": {label: {...}}}."""
    results = {}
    for label in suite.checkpoints:
        config = suite.eval_config(label)
        done = Path(config.out)
        results[label] = json.loads(done.read_text()) if done.exists() else run_eval(config)
    summary = {
        "accuracy": {label: r["accuracy"] for label, r in results.items()},
        "reward": {label: r["reward"] for label, r in results.items()},
        "per_reward": {label: r.get("per_reward", {}) for label, r in results.items()},
    }
    atomic_write_json(Path(suite.out_dir) / "summary.json", summary)
    return summary
