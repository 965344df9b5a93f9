"""Training state for resume: trainable weights, optimizer, scheduler, RNG, data cursor and extra state (δ, ...).

Written atomically to `<dir>/train_state.pt` (a temporary file, then a rename), so a crash mid-save leaves the
previous state intact. Loaded with `weights_only=True`: only tensors and plain containers.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

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
