"""Gradient properties of GSPO / GSPO-token / GRPO: equivalences, masking, permutation, the ratio-1 limit."""

from __future__ import annotations

import warnings

import pytest
import torch

from cascade_rl.algos import grpo_loss, gspo_loss

AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum"]


def batch(seed: int = 0, spread: float = 2e-3):
    """4 sequences × 6 tokens, ragged mask, old log-probs jittered so some ratios leave [1-3e-4, 1+4e-4]."""
    gen = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    old = logps + spread * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    advantages = torch.tensor([1.0, -0.5, -1.5, 0.7], dtype=torch.float64)
    return logps, old, advantages, mask


def grad_of(fn, logps: torch.Tensor, *args, **kwargs):
    leaf = logps.clone().requires_grad_(True)
    loss, metrics = fn(leaf, *args, **kwargs)
    loss.backward()
    return loss.detach(), leaf.grad, metrics


@pytest.mark.parametrize("clip", [(3e-4, 4e-4), (1e-3, 1e-3)])
@pytest.mark.parametrize("token_shaped", [False, True])
def test_gspo_token_equals_gspo_for_sequence_advantages(clip, token_shaped):
    logps, old, adv, mask = batch()
    lo, hi = clip
    loss_s, grad_s, m_s = grad_of(gspo_loss, logps, old, adv, mask, clip_low=lo, clip_high=hi)
    token_adv = adv[:, None].expand(-1, 6).clone() if token_shaped else adv
    loss_t, grad_t, m_t = grad_of(gspo_loss, logps, old, token_adv, mask, clip_low=lo, clip_high=hi, variant="token")
    assert 0 < m_s["clip_fraction"] < 1  # both clipped and unclipped sequences are exercised
    torch.testing.assert_close(loss_t, loss_s, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_t, grad_s, rtol=1e-12, atol=1e-15)
    for key in m_s:
        torch.testing.assert_close(m_t[key], m_s[key])


def scramble_padding(logps, old, mask):
    pad = mask == 0
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=logps.dtype)
    fill = junk.repeat(pad.numel() // 4 + 1)[: pad.numel()].view_as(pad)
    return torch.where(pad, fill, logps), torch.where(pad, fill.flip(0), old)


CASES = [(gspo_loss, {}), (gspo_loss, {"variant": "token"})] + [
    (grpo_loss, {"aggregation": mode}) for mode in AGGREGATIONS
]


@pytest.mark.parametrize(("fn", "kwargs"), CASES)
def test_masked_positions_change_nothing(fn, kwargs):
    logps, old, adv, mask = batch()
    loss, grad, _ = grad_of(fn, logps, old, adv, mask, **kwargs)
    junk_logps, junk_old = scramble_padding(logps, old, mask)
    loss_j, grad_j, _ = grad_of(fn, junk_logps, junk_old, adv, mask, **kwargs)
    torch.testing.assert_close(loss_j, loss)
    torch.testing.assert_close(grad_j, grad)  # including exact zeros (no NaN) at every padded slot
    assert torch.all(grad[mask == 0] == 0)


@pytest.mark.parametrize(("fn", "kwargs"), CASES)
def test_batch_permutation_changes_nothing(fn, kwargs):
    logps, old, adv, mask = batch()
    perm = torch.tensor([2, 0, 3, 1])
    loss, grad, metrics = grad_of(fn, logps, old, adv, mask, **kwargs)
    loss_p, grad_p, metrics_p = grad_of(fn, logps[perm], old[perm], adv[perm], mask[perm], **kwargs)
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(grad_p, grad[perm])
    for key in metrics:
        torch.testing.assert_close(metrics_p[key], metrics[key])


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_gspo_at_ratio_one_is_the_plain_policy_gradient(variant):
    # With old = logps, s_i = 1 sits inside the clip window, and d s_i = s_i · (1/|y_i|) Σ_t d logp_it, so the
    # GSPO gradient is that of -(1/B) Σ_i A_i · mean_t logp_it (REINFORCE with length-normalised log-likelihood).
    logps, _, adv, mask = batch()
    _, grad, metrics = grad_of(gspo_loss, logps, logps.detach(), adv, mask, variant=variant)
    leaf = logps.clone().requires_grad_(True)
    m = mask.to(logps.dtype)
    plain = -(adv * (leaf * m).sum(-1) / m.sum(-1)).mean()
    plain.backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-12, atol=1e-15)
    assert metrics["clip_fraction"] == 0 and metrics["ratio_mean"] == 1


def test_grpo_at_ratio_one_is_the_plain_policy_gradient():
    logps, _, adv, mask = batch()
    _, grad, _ = grad_of(grpo_loss, logps, logps.detach(), adv, mask, aggregation="token-mean")
    leaf = logps.clone().requires_grad_(True)
    m = mask.to(logps.dtype)
    (-(adv[:, None] * leaf * m).sum() / m.sum()).backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-12, atol=1e-15)


def test_gradients_match_finite_differences():
    logps, old, adv, mask = batch(spread=0.05)  # ratios well inside a 0.2 window: no kink at the test points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the GRPO-scale clip warning

        def gspo(x):
            return gspo_loss(x, old, adv, mask, clip_low=0.2, clip_high=0.2)[0]

        def grpo(x):
            return grpo_loss(x, old, adv, mask, aggregation="seq-mean-token-mean")[0]

        for fn in (gspo, grpo):
            assert torch.autograd.gradcheck(fn, (logps.clone().requires_grad_(True),))


def test_old_logps_and_advantages_get_no_gradient():
    logps, old, adv, mask = batch()
    old, adv = old.clone().requires_grad_(True), adv.clone().requires_grad_(True)
    loss, _ = gspo_loss(logps.clone().requires_grad_(True), old, adv, mask)
    loss.backward()
    assert old.grad is None and adv.grad is None


def test_gspo_log_ratio_is_clamped_at_ten():
    # A sequence whose mean log-ratio is 12 with A < 0: exp is capped at e^10 (as in the released verl code) and,
    # past the cap, no gradient flows. A value of e^12 would give loss 0.5·e^12.
    logps = torch.zeros(1, 2, dtype=torch.float64)
    old = logps - 12.0
    loss, grad, metrics = grad_of(gspo_loss, logps, old, torch.tensor([-0.5], dtype=torch.float64), torch.ones(1, 2))
    torch.testing.assert_close(loss, torch.tensor(0.5 * torch.e**10, dtype=torch.float64))
    assert torch.all(grad == 0)
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(torch.e**10, dtype=torch.float64))


def test_sequence_with_no_kept_token_leaves_the_mean():
    logps, old, adv, mask = batch()
    empty = torch.cat([mask, torch.zeros(1, 6, dtype=mask.dtype)])
    extra = torch.cat([adv, torch.tensor([5.0], dtype=adv.dtype)])
    pad = torch.zeros(1, 6, dtype=logps.dtype)
    loss, _ = gspo_loss(logps, old, adv, mask)
    loss_e, metrics = gspo_loss(torch.cat([logps, pad]), torch.cat([old, pad]), extra, empty)
    torch.testing.assert_close(loss_e, loss)
    assert torch.isfinite(metrics["ratio_min"])


def test_all_masked_batch_gives_zero_loss_and_nan_ratio_stats():
    logps, old, adv, mask = batch()
    leaf = logps.clone().requires_grad_(True)
    loss, metrics = gspo_loss(leaf, old, adv, torch.zeros_like(mask))
    loss.backward()  # still connected to the graph
    assert loss == 0 and torch.all(leaf.grad == 0)
    assert torch.isnan(metrics["ratio_mean"]) and metrics["clip_fraction"] == 0
