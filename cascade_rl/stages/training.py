"""Pieces every trainer shares: the accelerator and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

SCHEDULES = ("cosine", "constant")


def make_accelerator(mixed_precision: str = "auto", log_with: list[str] | None = None) -> Accelerator:
    """CPU (gloo when launched with several processes) or GPU; "auto" precision is bf16 on GPU, fp32 on CPU."""
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision, log_with=log_with or None)


def make_schedule(name: str, optimizer, *, warmup_ratio: float, total_steps: int):
    """Linear warmup over ceil(warmup_ratio · total) steps, then cosine decay to 0 or a constant rate."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    warmup = math.ceil(warmup_ratio * total_steps)
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
