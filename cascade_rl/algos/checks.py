"""Input validation shared by every loss: shapes, masks, dtypes and finiteness.

The finiteness check is the single device-to-host synchronisation a loss call makes: one boolean per named
tensor is stacked on the device and read back once. Raising an error needs a Python bool, so a guardrail that
"raises on NaN" cannot avoid that one read; everything else (losses, metrics, δ) stays on the device.
"""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 for loss arithmetic: half precision and integers (e.g. 0/1 rewards) become float32,
    float64 stays (exp of a mean log-ratio needs the bits)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def as_bool_mask(mask: torch.Tensor, *, name: str = "mask") -> torch.Tensor:
    """A 0/1 (or bool) mask as bool; any non-zero entry counts as a kept position."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...], meaning: str) -> None:
    """Raise ValueError unless `tensor.shape == shape`; `meaning` spells the expected layout, e.g. "[B, T]"."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {meaning}, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {meaning} = {tuple(shape)}")


def check_batch(name: str, tensor: torch.Tensor, ndim: int) -> None:
    """Raise ValueError unless `tensor` has `ndim` dimensions and a non-empty batch dimension."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != ndim or tensor.shape[0] == 0:
        layout = "[B]" if ndim == 1 else "[B, T]"
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected a non-empty {layout}")


def require_finite(tensors: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> None:
    """Raise ValueError naming the first tensor holding NaN or ±inf.

    A tensor with the same shape as `mask` is only checked where the mask keeps a position: padding may hold
    anything (some engines return -inf log-probs there) and never reaches the loss.
    Skipped while torch.compile traces, where a data-dependent branch would break the graph.
    """
    if torch.compiler.is_compiling():
        return
    flags = []
    for tensor in tensors.values():
        ok = torch.isfinite(tensor)
        if mask is not None and ok.shape == mask.shape:
            ok = ok | ~mask
        flags.append(ok.all())
    bad = (~torch.stack(flags)).tolist()  # the one host sync of a loss call
    for (name, tensor), is_bad in zip(tensors.items(), bad):
        if is_bad:
            where = " at kept (mask=1) positions" if mask is not None and tensor.shape == mask.shape else ""
            raise ValueError(
                f"{name} contains NaN or inf{where}; the loss would be NaN and poison the weights. "
                f"Check how {name} was computed (log-probs of the right tokens, rewards in range)."
            )


def check_clip_range(clip_low: float, clip_high: float) -> None:
    """Clip bounds are 1 - clip_low and 1 + clip_high; both must leave a non-empty interval around 1."""
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low={clip_low} must lie in [0, 1): the lower ratio bound is 1 - clip_low > 0")
    if clip_high < 0.0:
        raise ValueError(f"clip_high={clip_high} must be >= 0: the upper ratio bound is 1 + clip_high")
