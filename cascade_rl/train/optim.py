"""The `optim:` section every trainer stage (SFT, MPO, GSPO) shares: how it steps, for how long, in what precision.

It holds the optimizer (AdamW: lr, weight_decay, max_grad_norm), the learning-rate schedule, the run length, the
batch and its accumulation, and the training precision. What a run writes (out_dir, save_steps, log_with), what
trains (freeze_*, lora_*) and the seed stay top-level in the stage config. Each stage gives the section its own
defaults (`SFT_OPTIM`, `MPO_OPTIM`, `GSPO_OPTIM`, each in its stage's file); a YAML section that sets some keys
keeps the stage's defaults for the others, and from Python `dataclasses.replace(MPO_OPTIM, lr=1e-5)` does the same.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from cascade_rl.config import check_choices

Schedule = Literal["cosine", "constant"]
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
Precision = Literal["auto", "no", "fp16", "bf16"]  # "auto": bf16 on a GPU, fp32 ("no") on a CPU


@dataclass(frozen=True)
class OptimConfig:
    """AdamW(lr, weight_decay) with gradients clipped to max_grad_norm; linear warmup over ceil(warmup_ratio ·
    steps) steps, then cosine decay to 0 or a constant rate; `epochs` passes over the data, or exactly `max_steps`
    optimizer steps when > 0. Global batch = per_device_batch × grad_accum × processes (SFT, MPO; GSPO batches by
    prompts). The class defaults are InternVL's schedule conventions (cosine, warmup 0.03, weight decay 0.05)."""

    lr: float = 1e-5
    lr_schedule: Schedule = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int = 0
    per_device_batch: int = 1
    grad_accum: int = 1
    mixed_precision: Precision = "auto"

    def __post_init__(self):
        check_choices(self)
        if min(self.per_device_batch, self.grad_accum, self.epochs) < 1 or self.max_steps < 0:
            raise ValueError("per_device_batch, grad_accum and epochs must be at least 1, max_steps at least 0")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio is a share of the run's steps, in [0, 1]; got {self.warmup_ratio}")
