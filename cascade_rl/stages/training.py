"""Pieces every trainer shares: the accelerator, the learning-rate schedule, the data order, the policy."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from cascade_rl.models import load_policy
from cascade_rl.models.parts import add_lora, freeze_parts

SCHEDULES = ("cosine", "constant")


def make_accelerator(mixed_precision: str = "auto", log_with: list[str] | None = None, out_dir=None) -> Accelerator:
    """CPU (gloo when launched with several processes) or GPU; "auto" precision is bf16 on GPU, fp32 on CPU.
    Trackers named in `log_with` ("tensorboard", "wandb") write under `out_dir/trackers`."""
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    project_dir = str(tracker_dir(out_dir)) if log_with and out_dir is not None else None
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        log_with=log_with or None,
        project_dir=project_dir,
    )


def tracker_dir(out_dir) -> Path:
    return Path(out_dir) / "trackers"


def start_trackers(accelerator: Accelerator, project: str, out_dir, config: dict) -> None:
    """Open the accelerator's trackers (main process only): TensorBoard events in `out_dir/trackers/<project>`,
    W&B run files in `out_dir/trackers/wandb` (WANDB_MODE=offline keeps them on this machine for `wandb sync`)."""
    if not accelerator.log_with:
        return
    tracker_dir(out_dir).mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(project, config=config, init_kwargs={"wandb": {"dir": str(tracker_dir(out_dir))}})


def make_schedule(name: str, optimizer, *, warmup_ratio: float, total_steps: int):
    """Linear warmup over ceil(warmup_ratio · total) steps, then cosine decay to 0 or a constant rate."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    warmup = math.ceil(warmup_ratio * total_steps)
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def global_order(n_pairs: int, epochs: int, seed: int) -> list[int]:
    """Pair indices for the whole run: one seeded permutation per epoch, concatenated."""
    order = []
    for epoch in range(epochs):
        order += torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order


def micro_batch(order: list[int], step: int, micro: int, config, rank: int, world: int) -> list[int]:
    """Indices for (optimizer step, micro-step, rank): micro-steps are consecutive slices of the global batch,
    each split into `world` consecutive per-rank slices of `config.per_device_batch`."""
    global_batch = config.per_device_batch * config.grad_accum * world
    start = step * global_batch + (micro * world + rank) * config.per_device_batch
    return order[start : start + config.per_device_batch]


def prepare_policy(config):
    """Load, freeze and (optionally) LoRA-wrap the policy named by a trainer config (model_path, freeze_*,
    lora_*); returns (model in train mode, processor, trainable parameter counts per part)."""
    model, processor = load_policy(config.model_path)
    counts = freeze_parts(model, vision=config.freeze_vision, projector=config.freeze_projector, llm=config.freeze_llm)
    if config.lora_rank:
        model = add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha)
    return model.train(), processor, counts
