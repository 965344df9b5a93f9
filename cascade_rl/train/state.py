"""Training state for resume: trainable weights, optimizer, scheduler, RNG, data cursor and extra state (δ, ...).

Written atomically to `<dir>/train_state.pt` (a temporary file, then a rename), so a crash mid-save leaves the
previous state intact. Loaded with `weights_only=True`: only tensors and plain containers.

Under DeepSpeed every rank holds its own partition of the optimizer, so the engine's state goes through
`accelerator.save_state` into `<dir>/engine-<step>/` (all ranks write), and `train_state.pt` keeps the rest (step,
scheduler, extra) and names that directory: it is renamed into place only after every rank has written, so a
crash mid-save still leaves the previous pair intact.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch
from accelerate.utils import DistributedType

STATE_FILE = "train_state.pt"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_train_state(directory: Path, *, model, optimizer, scheduler, step: int, extra: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rng_torch": torch.get_rng_state(),
        "rng_python": list(random.getstate()[1]),
        "extra": extra,
    }
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)
    return directory / STATE_FILE


def load_train_state(directory: Path, *, model, optimizer, scheduler) -> tuple[int, dict] | None:
    """Restore into the given objects; returns (step, extra), or None when `directory` holds no state."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if "engine" in state:
        raise ValueError(f"{path}: written by a DeepSpeed run; resume it under the same DeepSpeed launch")
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise ValueError(
            f"{path}: state lacks trainable weights {sorted(missing)[:3]}...; was the freeze config changed?"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    random.setstate((3, tuple(state["rng_python"]), None))
    return state["step"], state["extra"]


def save_deepspeed_state(directory: Path, accelerator, *, scheduler, step: int, extra: dict) -> None:
    """All ranks: the engine state into `<dir>/engine-<step>`, then (rank 0) `train_state.pt` naming it."""
    engine_dir = directory / f"engine-{step:08d}"
    accelerator.save_state(str(engine_dir))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"engine": engine_dir.name, "scheduler": scheduler.state_dict(), "step": step, "extra": extra}
        tmp = directory / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(directory / STATE_FILE)
        for old in directory.glob("engine-*"):
            if old.name != engine_dir.name:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_deepspeed_state(directory: Path, accelerator, *, scheduler) -> tuple[int, dict] | None:
    """All ranks: restore the engine (model, optimizer partitions, RNG) and the scheduler; (step, extra) or None."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if "engine" not in state:
        raise ValueError(f"{path}: written by a run without DeepSpeed; resume it without DeepSpeed")
    accelerator.load_state(str(directory / state["engine"]))
    scheduler.load_state_dict(state["scheduler"])
    return state["step"], state["extra"]


def uses_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_run_state(directory: Path, accelerator, *, model, optimizer, scheduler, step: int, extra: dict) -> None:
    """Every rank calls this: the DeepSpeed layout under DeepSpeed, else rank 0 writes `train_state.pt`."""
    if uses_deepspeed(accelerator):
        return save_deepspeed_state(directory, accelerator, scheduler=scheduler, step=step, extra=extra)
    if accelerator.is_main_process:
        save_train_state(directory, model=model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra)
    accelerator.wait_for_everyone()


def load_run_state(directory: Path, accelerator, *, model, optimizer, scheduler) -> tuple[int, dict] | None:
    """Every rank calls this after `accelerator.prepare`; (step, extra), or None when there is nothing to resume."""
    if uses_deepspeed(accelerator):
        return load_deepspeed_state(directory, accelerator, scheduler=scheduler)
    return load_train_state(directory, model=model, optimizer=optimizer, scheduler=scheduler)
