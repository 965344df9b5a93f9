"""KL penalty to a frozen reference policy: the k3 estimator of the optional KL term of the online stage.

InternVL3.5 runs GSPO without a reference model (SPEC §3); the GSPO stage adds `kl_coef · k3_kl(...)` to the
policy loss only when a recipe sets kl_coef > 0.
"""

from __future__ import annotations

import torch

from cascade_rl.algos.checks import as_bool_mask, check_batch, check_shape, require_finite, upcast


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(π_θ ‖ π_ref) from the sampled tokens: mean over sequences of the token mean.

    d_b,t = log π_ref(y_b,t) − log π_θ(y_b,t)
    k3_b,t = exp(d_b,t) − d_b,t − 1                         (≥ 0, unbiased for KL(π_θ ‖ π_ref) when y ~ π_θ)
    KL = (1/B) Σ_b ( Σ_t mask·k3_b,t / max(Σ_t mask, 1) )
    Source: Schulman, "Approximating KL divergence" (2020), estimator k3; the GRPO paper's KL term (Shao et al.
    2024, eq. 4); verl `kl_penalty="low_var_kl"` / "k3".
    Departures: no clamp (verl clamps d to [−20, 20] and k3 to [−10, 10]); a sequence with no kept token counts as
    0 in the mean over B (the policy losses drop it; the GSPO stage never has one: empty completions are refused).

    Args:
        logps: [B, T] log π_θ of the sampled tokens (gradient flows through it).
        ref_logps: [B, T] log π_ref of the same tokens (treated as a constant).
        mask: [B, T] 1 on completion tokens; padded positions may hold anything.
    Returns:
        [] the KL estimate.
    """
    check_batch("logps", logps, 2)
    check_shape("ref_logps", ref_logps, logps.shape, "[B, T] like logps")
    mask = as_bool_mask(mask)
    check_shape("mask", mask, logps.shape, "[B, T] like logps")
    require_finite({"logps": logps, "ref_logps": ref_logps}, mask)
    d = upcast(ref_logps).detach() - upcast(logps)
    d = torch.where(mask, d, torch.zeros_like(d))  # padding: d = 0 gives k3 = 0, and no NaN reaches the gradient
    per_token = torch.exp(d) - d - 1
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
