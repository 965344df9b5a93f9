"""How a [B, T] matrix of per-token losses becomes one scalar: the step GRPO, DAPO, Dr.GRPO and GSPO differ on.

The split mirrors verl's `agg_loss` (verl `trainer/ppo/core_algos.py`). Modes:

| mode                  | formula                                            | used by                               |
|-----------------------|----------------------------------------------------|---------------------------------------|
| "token-mean"          | Σ_bt m·ℓ / Σ_bt m                                  | DAPO; TRL "bnpo"                      |
| "seq-mean-token-mean" | mean over non-empty b of (Σ_t m·ℓ / Σ_t m)         | GRPO paper; TRL "grpo"; GSPO (forced) |
| "seq-mean-token-sum"  | (1/B) Σ_b Σ_t m·ℓ, divided by norm_length if given | Dr.GRPO (norm_length = max length)    |
| "token-sum"           | Σ_bt m·ℓ                                           | length- and batch-size-weighted       |
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum")


def check_aggregation(mode: str, norm_length: float | None = None) -> None:
    """Raise ValueError for an unknown mode, or a norm_length given to a mode that does not use it."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    if norm_length is not None and mode != "seq-mean-token-sum":
        raise ValueError(f"norm_length={norm_length} only applies to 'seq-mean-token-sum' (Dr.GRPO), not {mode!r}")
    if norm_length is not None and not norm_length > 0:
        raise ValueError(f"norm_length={norm_length} must be > 0 (Dr.GRPO uses the max completion length)")


def aggregate(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, *, norm_length: float | None = None
) -> torch.Tensor:
    """Reduce per-token losses to a scalar.

    Args:
        loss_mat: [B, T] per-token loss (values at mask = 0 are ignored, whatever they are).
        mask: [B, T] bool, True where a token counts.
        mode: one of AGGREGATIONS (see the module table).
        norm_length: only for "seq-mean-token-sum": a constant dividing each sequence's token sum.
    Returns:
        [] loss. An all-masked batch gives 0 (still connected to the graph), never NaN.
    """
    check_aggregation(mode, norm_length)
    kept = torch.where(mask, loss_mat, torch.zeros_like(loss_mat))
    if mode == "token-mean":
        return kept.sum() / mask.sum().clamp(min=1)
    if mode == "token-sum":
        return kept.sum()
    token_sums = kept.sum(dim=-1)  # [B]
    if mode == "seq-mean-token-sum":
        return token_sums.mean() / (1.0 if norm_length is None else norm_length)
    lengths = mask.sum(dim=-1)  # [B]
    nonempty = lengths > 0
    seq_means = token_sums / lengths.clamp(min=1)
    # A sequence with no kept token (e.g. fully truncated) would be 0/0: it leaves the mean, as in current verl.
    return seq_means.sum() / nonempty.sum().clamp(min=1)
