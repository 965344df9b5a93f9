"""Importance weights that correct for the rollout engine sampling from a slightly different policy than the
trainer computes (other kernels, precision or batching): the optional `is_correction="sequence"` of GSPO."""

from __future__ import annotations

import torch

from cascade_rl.algos.checks import as_bool_mask, check_batch, check_shape, require_finite, upcast


def sequence_is_weights(
    trainer_logps: torch.Tensor, engine_logps: torch.Tensor, mask: torch.Tensor, *, cap: float
) -> torch.Tensor:
    """Sequence-level truncated importance weights, one per completion.

    w_b = min( exp( Σ_t mask·(log π_trainer − log π_engine) / max(Σ_t mask, 1) ), cap )
    i.e. the geometric mean of the token ratios π_trainer/π_engine, truncated at `cap` (the same length
    normalisation as the GSPO ratio). The GSPO stage multiplies the advantages by w.
    Source: truncated importance sampling for engine/trainer mismatch (Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training"); verl `rollout_is_level="geometric"`,
    `rollout_is_mode="truncate"`, threshold = cap.
    Departures: no lower bound, veto or clamp of the log-ratio before exp (verl bounds it at ±20); a sequence
    with no kept token gets exp(0) = 1.

    Args:
        trainer_logps: [B, T] log-probs of the sampled tokens under the trainer's weights before the update.
        engine_logps: [B, T] log-probs of the same tokens as the engine reported them.
        mask: [B, T] 1 on completion tokens; padded positions may hold anything.
        cap: the truncation threshold, > 0.
    Returns:
        [B] weights in (0, cap], constants (no gradient).
    """
    check_batch("trainer_logps", trainer_logps, 2)
    check_shape("engine_logps", engine_logps, trainer_logps.shape, "[B, T] like trainer_logps")
    mask = as_bool_mask(mask)
    check_shape("mask", mask, trainer_logps.shape, "[B, T] like trainer_logps")
    if not cap > 0:
        raise ValueError(f"cap={cap} must be > 0: the weights are truncated to at most cap")
    require_finite({"trainer_logps": trainer_logps, "engine_logps": engine_logps}, mask)
    gaps = upcast(trainer_logps).detach() - upcast(engine_logps).detach()
    gaps = torch.where(mask, gaps, torch.zeros_like(gaps))
    mean_gap = gaps.sum(-1) / mask.sum(-1).clamp(min=1)
    return torch.exp(mean_gap).clamp(max=cap)
