"""Clipped policy-gradient losses of the online stage: GSPO (sequence ratio), GSPO-token and GRPO (token ratio).

All take per-token log-probs of the sampled completions under the current policy (`logps`, with gradient) and
under the policy that sampled them (`old_logps`, treated as constants), the advantages and the completion mask,
and return `(loss, metrics)`; minimise the loss. No KL term: InternVL3.5 runs GSPO "without reference model
constraints" [SPEC §3]; add one outside if you need it.
"""

from __future__ import annotations

import torch

from cascade_rl.algos.aggregation import aggregate, check_aggregation
from cascade_rl.algos.checks import as_bool_mask, check_batch, check_clip_range, check_shape, require_finite, upcast
from cascade_rl.algos.guardrails import GSPO_AGGREGATION, check_gspo_settings

GSPO_VARIANTS = ("sequence", "token")
# verl-internvl `compute_policy_loss_gspo` clamps the (sequence) log-ratio at <= 10 before exp: e^10 ≈ 2.2e4.
GSPO_MAX_LOG_RATIO = 10.0
# verl `compute_policy_loss_vanilla` clamps the token log-ratio to [-20, 20] before exp.
GRPO_LOG_RATIO_BOUND = 20.0


def _prepare(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, per_token: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate; return (logps, old_logps, advantages [B, 1] or [B, T], mask) with padding zeroed out.

    Zeroing padding before any arithmetic (rather than multiplying by the mask after) keeps NaN/inf in padded
    slots out of both the value and the gradient (0 · inf = NaN in a backward pass).
    """
    check_batch("logps", logps, 2)
    check_shape("old_logps", old_logps, logps.shape, "[B, T] like logps")
    mask = as_bool_mask(mask)
    check_shape("mask", mask, logps.shape, "[B, T] like logps")
    if per_token and isinstance(advantages, torch.Tensor) and advantages.dim() == 2:
        check_shape("advantages", advantages, logps.shape, "[B, T] like logps")
    else:
        check_shape("advantages", advantages, logps.shape[:1], "[B] (one per sequence)")
    require_finite({"logps": logps, "old_logps": old_logps, "advantages": advantages}, mask)
    zero = torch.zeros((), dtype=upcast(logps).dtype, device=logps.device)
    logps = torch.where(mask, upcast(logps), zero)
    old_logps = torch.where(mask, upcast(old_logps).detach(), zero)
    advantages = upcast(advantages).detach().to(zero.dtype)
    advantages = advantages[:, None] if advantages.dim() == 1 else torch.where(mask, advantages, zero)
    return logps, old_logps, advantages, mask


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic surrogate: max(-A·s, -A·clip(s, 1-lo, 1+hi)) and where the clipped branch wins."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def _ratio_stats(ratio: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached mean / min / max of `ratio` over kept entries; NaN when nothing is kept."""
    ratio = ratio.detach()
    count = keep.sum()
    nan = torch.full((), float("nan"), dtype=ratio.dtype, device=ratio.device)
    inf = torch.full((), float("inf"), dtype=ratio.dtype, device=ratio.device)
    mean = torch.where(keep, ratio, 0.0).sum() / count.clamp(min=1)
    low, high = torch.where(keep, ratio, inf).min(), torch.where(keep, ratio, -inf).max()
    empty = count == 0
    return {
        "ratio_mean": torch.where(empty, nan, mean),
        "ratio_min": torch.where(empty, nan, low),
        "ratio_max": torch.where(empty, nan, high),
    }


def gspo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    variant: str = "sequence",
    aggregation: str = GSPO_AGGREGATION,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Group Sequence Policy Optimization loss (Zheng et al. 2025, arXiv 2507.18071) [SPEC §3].

    s_i = exp( (1/|y_i|) Σ_t (logp_it - old_logp_it) )            (geometric mean of the token ratios)
    sequence: L = (1/G) Σ_i max(-Â_i·s_i, -Â_i·clip(s_i, 1-clip_low, 1+clip_high))
    token:    s_it = sg[s_i]·π_θ(y_it)/sg[π_θ(y_it)],  L = (1/G) Σ_i (1/|y_i|) Σ_t max(-Â_it·s_it, -Â_it·clip(s_it))
    The token variant has the same value and, when Â_it = Â_i, the same gradient as the sequence variant; it
    exists for per-token advantages. Released code: verl-internvl `compute_policy_loss_gspo` (token form).
    Choices: the log-ratio is clamped at <= 10 before exp, as in the released code (a no-op unless a sequence's
    mean log-ratio exceeds 10; beyond it the gradient is 0); a sequence with no kept token leaves the mean;
    defaults are the paper's 3e-4 / 4e-4 (InternVL3.5's released scripts ran verl's default 0.2 / 0.2).
    Guardrails: any aggregation but "seq-mean-token-mean" raises (token-sum with its own reason); a clip ≥ 0.05
    warns; NaN/inf at kept positions raises, naming the tensor.

    Args:
        logps: [B, T] log π_θ of each completion token (with gradient).
        old_logps: [B, T] log π_old of the same tokens, from the sampling policy (no gradient).
        advantages: [B] one per sequence; [B, T] allowed for variant="token".
        mask: [B, T] 1 on completion tokens.
        clip_low, clip_high: ε_low, ε_high of the clip window [1-ε_low, 1+ε_high].
        variant: "sequence" or "token".
        aggregation: must be "seq-mean-token-mean"; accepted so a registry can pass the same keywords to every loss.
    Returns:
        loss [] and detached metrics: clip_fraction (share of sequences, or seq-mean of tokens for the token
        variant, where the clipped branch is active), sequence ratio s_i stats (before clipping) ratio_mean/min/max.
    """
    check_gspo_settings(aggregation=aggregation, clip_low=clip_low, clip_high=clip_high)
    if variant not in GSPO_VARIANTS:
        raise ValueError(f"unknown GSPO variant {variant!r}; valid: {', '.join(GSPO_VARIANTS)}")
    logps, old_logps, advantages, mask = _prepare(logps, old_logps, advantages, mask, per_token=variant == "token")
    lengths = mask.sum(dim=-1)  # [B]
    seq_log_ratio = (logps - old_logps).sum(dim=-1) / lengths.clamp(min=1)  # [B]
    if variant == "sequence":
        ratio = seq_log_ratio.clamp(max=GSPO_MAX_LOG_RATIO).exp()[:, None]  # [B, 1]
        keep = (lengths > 0)[:, None]  # [B, 1]
    else:
        log_ratio = seq_log_ratio.detach()[:, None] + logps - logps.detach()  # [B, T], value = seq_log_ratio
        ratio = log_ratio.clamp(max=GSPO_MAX_LOG_RATIO).exp()
        keep = mask
    losses, clipped = _clipped_surrogate(ratio, advantages, clip_low, clip_high)
    loss = aggregate(losses, keep, GSPO_AGGREGATION)
    seq_ratio = seq_log_ratio.detach().clamp(max=GSPO_MAX_LOG_RATIO).exp()
    metrics = {"clip_fraction": aggregate(clipped.to(losses.dtype), keep, GSPO_AGGREGATION).detach()}
    metrics.update(_ratio_stats(seq_ratio, lengths > 0))
    return loss, metrics


def gspo_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    aggregation: str = GSPO_AGGREGATION,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`gspo_loss(..., variant="token")`: GSPO-token, registered as "gspo_token". Shapes as in `gspo_loss`."""
    return gspo_loss(
        logps, old_logps, advantages, mask, clip_low=clip_low, clip_high=clip_high, variant="token",
        aggregation=aggregation,
    )  # fmt: skip


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token-mean",
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss with per-token ratios, as in GRPO (Shao et al. 2024) and its variants.

    r_it = exp(logp_it - old_logp_it),   ℓ_it = max(-Â_it·r_it, -Â_it·clip(r_it, 1-clip_low, 1+clip_high))
    L = aggregate(ℓ, mask, aggregation): "token-mean" (DAPO; TRL "bnpo"), "seq-mean-token-mean" (GRPO paper;
    TRL "grpo"), "seq-mean-token-sum" (+ norm_length = max completion length: Dr.GRPO; TRL "dr_grpo"),
    "token-sum". Source: verl `compute_policy_loss_vanilla` + `agg_loss`; TRL `GRPOTrainer._compute_loss`.
    Choices: the log-ratio is clamped to [-20, 20] before exp, as verl does; no dual-clip (verl's clip_ratio_c)
    and no KL term (TRL's beta defaults to 0 too).

    Args:
        logps: [B, T] log π_θ of each completion token (with gradient).
        old_logps: [B, T] log π_old of the same tokens (no gradient).
        advantages: [B] per sequence, or [B, T] per token.
        mask: [B, T] 1 on completion tokens.
        clip_low, clip_high: ε_low, ε_high (DAPO's clip-higher uses e.g. 0.2 / 0.28).
        aggregation: one of cascade_rl.algos.aggregation.AGGREGATIONS.
        norm_length: the Dr.GRPO constant, only with "seq-mean-token-sum".
    Returns:
        loss [] and detached metrics: clip_fraction (token mean), token ratio stats ratio_mean/min/max.
    """
    check_clip_range(clip_low, clip_high)
    check_aggregation(aggregation, norm_length)
    logps, old_logps, advantages, mask = _prepare(logps, old_logps, advantages, mask, per_token=True)
    ratio = (logps - old_logps).clamp(-GRPO_LOG_RATIO_BOUND, GRPO_LOG_RATIO_BOUND).exp()  # [B, T]
    losses, clipped = _clipped_surrogate(ratio, advantages, clip_low, clip_high)
    loss = aggregate(losses, mask, aggregation, norm_length=norm_length)
    metrics = {"clip_fraction": aggregate(clipped.to(losses.dtype), mask, "token-mean").detach()}
    metrics.update(_ratio_stats(ratio, mask))
    return loss, metrics
