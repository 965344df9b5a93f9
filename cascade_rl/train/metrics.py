"""Metrics: one JSON line per step in `metrics.jsonl`, and the accelerate trackers (TensorBoard, W&B) if asked."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def scalars(metrics: dict) -> dict[str, float]:
    """Detached tensors and numbers → plain floats (one host sync per logging step, not per loss call)."""
    return {
        k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v) for k, v in metrics.items()
    }


class MetricsLog:
    """Appends step metrics to `path` (flushed per line, so a crash keeps every logged step)."""

    def __init__(self, path: Path, accelerator=None):
        self.path = Path(path)
        self.accelerator = accelerator

    def log(self, step: int, metrics: dict) -> dict[str, float]:
        values = scalars(metrics)
        if self.accelerator is None or self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(values, step=step)
        return values


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
