"""Advantage estimators: one scalar per completion from the rewards of its group (G completions per prompt)."""

from __future__ import annotations

import torch

from cascade_rl.algos.checks import check_batch, require_finite, upcast

SCALES = ("group", "batch", "none")
# group_advantages' defaults, which InternVL3.5's released recipe uses (verl: per-group std, eps 1e-6) [SPEC §3].
DEFAULT_SCALE = "group"
DEFAULT_EPS = 1e-6


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    check_batch("rewards", rewards, 1)
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: a group baseline needs at least 2 completions per prompt")
    if rewards.numel() % group_size:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}; "
            "lay rewards out prompt by prompt, G consecutive completions each"
        )
    require_finite({"rewards": rewards})
    return upcast(rewards).view(-1, group_size)  # [B, G]


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = DEFAULT_SCALE, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Group-relative advantages (GRPO), the estimator of InternVL3.5's online stage.

    Â_i = (r_i - mean_group(r)) / (std(r) + eps)
    scale="group": std over the group (unbiased, torch's default; GRPO, verl `compute_grpo_outcome_advantage`,
                   which InternVL3.5's released GSPO recipe uses with eps 1e-6 [SPEC §3]);
    scale="batch": std over the whole batch (TRL `scale_rewards="batch"`);
    scale="none":  no division, Â_i = r_i - mean_group(r) (Dr.GRPO, Liu et al. 2025; TRL `scale_rewards="none"`).
    Departures: a group whose rewards are all equal gets Â = 0 (std 0 → 0/eps); group_size 1 is refused rather
    than given verl's (mean 0, std 1) fallback, which turns raw rewards into advantages.

    Args:
        rewards: [B*G] one reward per completion, prompt by prompt (G consecutive entries per prompt).
        group_size: G, completions per prompt.
        scale: "group", "batch" or "none".
        eps: added to the std.
    Returns:
        [B*G] advantages, same order as `rewards`.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    grouped = _grouped(rewards, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (grouped.std() + eps)
    return centered.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out baseline (RLOO, Ahmadian et al. 2024; TRL `RLOOTrainer`).

    Â_i = r_i - (1/(G-1)) Σ_{j≠i} r_j  =  G/(G-1) · (r_i - mean_group(r))
    Departures: none.

    Args:
        rewards: [B*G] one reward per completion, prompt by prompt.
        group_size: G ≥ 2.
    Returns:
        [B*G] advantages.
    """
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)
