"""RunningMean: the reward shift δ of the BCO term, with TRL's RunningMoments semantics (SPEC §1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# TRL RunningMoments starts its count at 1e-24 rather than 0, so the first update divides by ~n_new, not by 0.
_INITIAL_COUNT = 1e-24


def _state_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps a mean over 1e5+ updates exact to ~1e-16; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class RunningMean:
    """Cumulative equal-weight mean of scalar updates, synchronised across ranks.

    Formula (TRL `RunningMoments.update`, trl v0.10.1 / v0.21.0 `trainer/utils.py`):
        batch_mean = mean over ranks of `value`          (all-reduce when torch.distributed is initialised)
        n_new      = world_size                          (1 without torch.distributed)
        mean      += (batch_mean - mean) * n_new / (count + n_new)
        count     += n_new
    starting from mean = 0, count = 1e-24. It is not an EMA: after k updates of one process it is the plain average
    of the k values. Departures: none in value. State lives in a 0-d float64 tensor on the device of the values
    (TRL keeps a Python float and calls `.item()`), so an update never waits for the device; `count` is a Python
    float because it grows by a known amount. Use it from every rank in the same order: the all-reduce is a
    collective call. `process_group` narrows the all-reduce to one group (default: every rank).

    Example:
        >>> shift = RunningMean()
        >>> _ = shift.update(torch.tensor(0.1))
        >>> shift.update(0.4)
        tensor(0.2500, dtype=torch.float64)
    """

    def __init__(self, *, process_group: Any = None) -> None:
        self.mean = torch.zeros((), dtype=torch.float64)  # []
        self.count = _INITIAL_COUNT
        self.process_group = process_group

    @torch.no_grad()
    def update(self, value: torch.Tensor | float) -> torch.Tensor:
        """Fold one scalar per rank into the mean and return the new mean (detached 0-d tensor)."""
        # A Python float goes straight to float64: torch.as_tensor(0.1) would round it through float32 first.
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
        if value.numel() != 1:
            raise ValueError(f"RunningMean.update takes one scalar per call, got shape {tuple(value.shape)}")
        dtype = _state_dtype(value.device)
        batch_mean = value.reshape(()).to(dtype=dtype, copy=True)
        n_new = 1
        if dist.is_available() and dist.is_initialized():
            n_new = dist.get_world_size(self.process_group)
            dist.all_reduce(batch_mean, op=dist.ReduceOp.SUM, group=self.process_group)
            batch_mean = batch_mean / n_new
        mean = self.mean.to(device=batch_mean.device, dtype=dtype)
        self.mean = mean + (batch_mean - mean) * (n_new / (self.count + n_new))
        self.count += n_new
        return self.mean

    def state_dict(self) -> dict[str, Any]:
        """{"mean": 0-d float64 CPU tensor, "count": float}: what a checkpoint must hold to resume δ exactly."""
        return {"mean": self.mean.detach().to("cpu", copy=True), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output; `mean` may also be a plain float (e.g. read back from JSON)."""
        missing = {"mean", "count"} - set(state)
        if missing:
            raise KeyError(f"RunningMean state is missing {sorted(missing)}; it has {sorted(state)}")
        device = self.mean.device
        mean = state["mean"]
        mean = mean.detach() if isinstance(mean, torch.Tensor) else torch.tensor(mean, dtype=torch.float64)
        self.mean = mean.to(device=device, dtype=_state_dtype(device)).reshape(())
        self.count = float(state["count"])
