"""MPO, the offline-stage loss of InternVL3.5: 0.8·DPO-sigmoid + 0.2·BCO (running shift δ) + 1.0·LM (SPEC §1).

Conventions: a "logratio" is the summed completion log-prob under the policy minus the same sum under the frozen
reference, `h = lp_θ(y) - lp_0(y)`, one number per sequence ([B]); never length-normalised (InternVL3.5
`trainer_dpo.py` sums per-token log-probs, as TRL does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cascade_rl.algos.checks import as_bool_mask, check_batch, check_shape, require_finite, upcast


def _dpo(h_c: torch.Tensor, h_r: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (h_c - h_r))


def _bco(h_c: torch.Tensor, h_r: torch.Tensor, beta: float, delta: torch.Tensor | float) -> torch.Tensor:
    delta = torch.as_tensor(delta, dtype=h_c.dtype, device=h_c.device).detach()
    return -F.logsigmoid(beta * h_c - delta) - F.logsigmoid(-(beta * h_r - delta))


def _lm(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    kept = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    return -kept.sum() / mask.sum().clamp(min=1)


def _check_pairs(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor) -> None:
    check_batch("chosen_logratios", chosen_logratios, 1)
    check_shape("rejected_logratios", rejected_logratios, chosen_logratios.shape, "[B] like chosen_logratios")
    require_finite({"chosen_logratios": chosen_logratios, "rejected_logratios": rejected_logratios})


def dpo_sigmoid_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Per-pair DPO loss, the preference term L_p of MPO.

    L_p = -log σ(β·(h_c - h_r))
    Source: DPO (Rafailov et al. 2023); TRL `loss_type="sigmoid"` with label_smoothing 0 (trl v0.21.0
    `dpo_trainer.py:1060`), as InternVL3.5 runs it [SPEC §1]. Departures: none.

    Args:
        chosen_logratios: [B] summed log-prob of the chosen completion, policy minus reference.
        rejected_logratios: [B] the same for the rejected completion.
        beta: inverse temperature β (InternVL uses TRL's default 0.1).
    Returns:
        [B] per-pair loss (the caller takes the mean).
    """
    _check_pairs(chosen_logratios, rejected_logratios)
    return _dpo(upcast(chosen_logratios), upcast(rejected_logratios), beta)


def bco_pair_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float, delta: torch.Tensor | float
) -> torch.Tensor:
    """Per-pair BCO loss, the quality term L_q of MPO.

    L_q = -log σ(β·h_c - δ) - log σ(-(β·h_r - δ))
    Source: BCO (Jung et al. 2024) as restated by the MPO paper (arXiv 2411.10442 §3) and TRL `bco_pair` in
    trl v0.21.0 `dpo_trainer.py:1089-1098` [SPEC §1]. δ is the running reward mean (see `RunningMean`,
    `mean_implicit_reward`); it is treated as a constant (no gradient flows into it). Departure: current TRL
    (1.x) dropped δ (δ ≡ 0); pass delta=0.0 to get that behaviour.

    Args:
        chosen_logratios: [B] summed log-prob of the chosen completion, policy minus reference.
        rejected_logratios: [B] the same for the rejected completion.
        beta: inverse temperature β.
        delta: reward shift δ, a float or a 0-d tensor.
    Returns:
        [B] per-pair loss.
    """
    _check_pairs(chosen_logratios, rejected_logratios)
    return _bco(upcast(chosen_logratios), upcast(rejected_logratios), beta, delta)


def lm_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of the chosen completions, the generation term L_g of MPO.

    L_g = -Σ_{b,t} mask·logp / Σ_{b,t} mask      (one mean over every kept token of the micro-batch)
    Source: InternVL3.5 via TRL `loss_type="sft"` (cross-entropy over all chosen completion tokens) [SPEC §1].
    Departures: the paper's per-sample -log π(y_c|x)/|y_c| equals this only at batch size 1, which every InternVL
    script uses; TRL 0.21's quirk of also dropping real token-id-0 tokens is not reproduced (the mask decides);
    an all-masked batch gives 0, not NaN.

    Args:
        token_logps: [B, T] log π_θ of each chosen completion token.
        mask: [B, T] 1 for completion tokens, 0 for prompt and padding.
    Returns:
        [] scalar loss.
    """
    check_batch("token_logps", token_logps, 2)
    mask = as_bool_mask(mask)
    check_shape("mask", mask, token_logps.shape, "[B, T] like token_logps")
    require_finite({"token_logps": token_logps}, mask)
    return _lm(upcast(token_logps), mask)


def _checked_sums(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The four per-sequence log-prob sums of a pair batch by name, after checking they are [B] alike."""
    named = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    check_batch("policy_chosen_logps", policy_chosen_logps, 1)
    for name, tensor in named.items():
        check_shape(name, tensor, policy_chosen_logps.shape, "[B] like policy_chosen_logps")
    return named


def _logratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_c, h_r [B]: policy minus (detached) reference sums."""
    h_c = upcast(policy_chosen_logps) - upcast(ref_chosen_logps).detach()
    h_r = upcast(policy_rejected_logps) - upcast(ref_rejected_logps).detach()
    return h_c, h_r


def mean_implicit_reward(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """This micro-batch's mean implicit reward, the value the BCO shift δ folds in before `mpo_loss` uses it.

    r̄ = mean(cat(β·h_c, β·h_r)),   h = Σ_t log π_θ − Σ_t log π_0      (mean over the 2B completions)
    Source: TRL 0.21 `DPOTrainer`, loss type `bco_pair` (`dpo_trainer.py:1089-1098`): the rewards β·h of the
    chosen and the rejected completions, concatenated, averaged and detached, then `running.update` [SPEC §1].
    Departures: none.
    The MPO stage runs, per micro-batch: `delta = running.update(mean_implicit_reward(...))`, then
    `mpo_loss(..., delta=delta)`, so the current micro-batch is folded in before δ is used (TRL's order).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: [B] each, as `mpo_loss`.
        beta: β.
    Returns:
        [] detached mean reward, at least float32.
    """
    named = _checked_sums(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    require_finite(named)  # before δ moves: a NaN here would poison every later BCO term
    h_c, h_r = _logratios(*named.values())
    return torch.cat([beta * h_c.detach(), beta * h_r.detach()]).mean()


def mpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    *,
    delta: torch.Tensor | float,
    beta: float = 0.1,
    weights: tuple[float, float, float] = (0.8, 0.2, 1.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mixed Preference Optimization loss of one micro-batch; a pure function (it can be called twice on a batch).

    L = w_p·mean_b L_p + w_q·mean_b L_q(δ) + w_g·L_g,   (w_p, w_q, w_g) = (0.8, 0.2, 1.0), β = 0.1
    δ is the caller's: InternVL3.5 / TRL 0.21 use the running mean of every micro-batch's `mean_implicit_reward`
    so far (all ranks), this micro-batch included (see `RunningMean`; the MPO stage does the update).
    Source: MPO paper (arXiv 2411.10442 §3); InternVL3.5 `internvl_chat_mpo.py:906-907` (loss types
    sigmoid/bco_pair/sft, weights 0.8/0.2/1.0) running TRL 0.21 `DPOTrainer` [SPEC §1].
    Departures: the reference log-probs are detached (they come from a frozen model anyway).

    Args:
        policy_chosen_logps: [B] Σ_t log π_θ over the chosen completion.
        policy_rejected_logps: [B] Σ_t log π_θ over the rejected completion.
        ref_chosen_logps: [B] Σ_t log π_0 over the chosen completion (frozen reference).
        ref_rejected_logps: [B] Σ_t log π_0 over the rejected completion.
        chosen_token_logps: [B, T] per-token log π_θ of the chosen sequences (for the LM term).
        chosen_mask: [B, T] 1 on chosen completion tokens.
        delta: the BCO reward shift δ for this micro-batch, a float or a 0-d tensor (a constant for autograd).
        beta: β.
        weights: (w_p, w_q, w_g).
    Returns:
        loss [] and detached metrics: dpo_loss, bco_loss, lm_loss (unweighted means), chosen_reward,
        rejected_reward (means of β·h), reward_accuracy (share with β·h_c > β·h_r), reward_margin, delta.
    """
    named = _checked_sums(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    check_batch("chosen_token_logps", chosen_token_logps, 2)
    chosen_mask = as_bool_mask(chosen_mask, name="chosen_mask")
    check_shape("chosen_mask", chosen_mask, chosen_token_logps.shape, "[B, T] like chosen_token_logps")
    if len(weights) != 3:
        raise ValueError(f"weights must be (w_dpo, w_bco, w_lm), got {weights!r}")
    delta = _as_delta(delta, policy_chosen_logps.device)
    require_finite({**named, "chosen_token_logps": chosen_token_logps, "delta": delta}, chosen_mask)

    h_c, h_r = _logratios(*named.values())
    chosen_rewards, rejected_rewards = beta * h_c.detach(), beta * h_r.detach()
    dpo = _dpo(h_c, h_r, beta).mean()
    bco = _bco(h_c, h_r, beta, delta).mean()
    lm = _lm(upcast(chosen_token_logps), chosen_mask)
    w_p, w_q, w_g = weights
    loss = w_p * dpo + w_q * bco + w_g * lm
    metrics = {
        "dpo_loss": dpo.detach(),
        "bco_loss": bco.detach(),
        "lm_loss": lm.detach(),
        "chosen_reward": chosen_rewards.mean(),
        "rejected_reward": rejected_rewards.mean(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        "delta": delta.clone(),
    }
    return loss, metrics


def _as_delta(delta: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """δ as a detached 0-d tensor on `device` (a float becomes float64, RunningMean's own dtype; MPS: float32)."""
    if not isinstance(delta, torch.Tensor):
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return torch.tensor(float(delta), dtype=dtype, device=device)
    if delta.numel() != 1:
        raise ValueError(f"delta must be one number (a float or a 0-d tensor), got shape {tuple(delta.shape)}")
    return delta.detach().reshape(()).to(device)
