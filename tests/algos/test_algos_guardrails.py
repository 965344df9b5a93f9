"""Refusals and warnings: each error names the culprit and says why."""

from __future__ import annotations

import warnings

import pytest
import torch

from cascade_rl.algos import (
    RunningMean,
    aggregate,
    bco_pair_loss,
    check_policy_loss_settings,
    dpo_sigmoid_loss,
    group_advantages,
    grpo_loss,
    gspo_loss,
    k3_kl,
    lm_loss,
    mean_implicit_reward,
    mpo_loss,
    sequence_is_weights,
    summed_next_token_nll,
)


def policy_inputs():
    logps = -torch.rand(2, 3)
    return logps, logps.detach().clone(), torch.tensor([1.0, -1.0]), torch.ones(2, 3)


def mpo_inputs():
    return [-torch.rand(2) for _ in range(4)] + [-torch.rand(2, 3), torch.ones(2, 3)]


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_gspo_refuses_token_sum_with_reason(variant):
    with pytest.raises(ValueError, match="token-sum.*length"):
        gspo_loss(*policy_inputs(), aggregation="token-sum", variant=variant)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum"])
def test_gspo_refuses_other_length_weighted_modes(mode):
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        gspo_loss(*policy_inputs(), aggregation=mode)


def test_gspo_warns_on_grpo_scale_clip_and_names_both_recipes():
    with pytest.warns(UserWarning) as record:
        gspo_loss(*policy_inputs(), clip_low=0.2, clip_high=0.2)
    message = str(record[0].message)
    assert "InternVL" in message and "0.2" in message and "3e-4" in message and "4e-4" in message


def test_gspo_paper_clip_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gspo_loss(*policy_inputs())
        check_policy_loss_settings("gspo_token", aggregation="seq-mean-token-mean", clip_low=3e-4, clip_high=4e-4)


def test_config_time_checks_without_tensors():
    with pytest.raises(ValueError, match="token-sum"):
        check_policy_loss_settings("gspo", aggregation="token-sum", clip_low=3e-4, clip_high=4e-4)
    with pytest.warns(UserWarning, match="GRPO-scale"):
        check_policy_loss_settings("gspo", aggregation="seq-mean-token-mean", clip_low=0.2, clip_high=0.28)
    check_policy_loss_settings("grpo", aggregation="token-sum", clip_low=0.2, clip_high=0.28)  # legal for GRPO
    with pytest.raises(KeyError, match="gspo, gspo_token"):
        check_policy_loss_settings("gpso", aggregation="token-mean", clip_low=0.2, clip_high=0.2)
    with pytest.raises(ValueError, match="clip_low"):
        check_policy_loss_settings("grpo", aggregation="token-mean", clip_low=1.0, clip_high=0.2)


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("fn", [gspo_loss, grpo_loss])
def test_policy_losses_name_the_non_finite_tensor(fn, position):
    args = list(policy_inputs())
    names = ["logps", "old_logps", "advantages"]
    bad = args[position].clone()
    bad.view(-1)[1] = float("nan") if position != 1 else float("inf")
    args[position] = bad
    with pytest.raises(ValueError, match=rf"^{names[position]} contains NaN or inf"):
        fn(*args)


MPO_SUMS = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]


def mpo_inputs_with_inf(name: str) -> list[torch.Tensor]:
    args = mpo_inputs()
    index = [*MPO_SUMS, "chosen_token_logps"].index(name)
    args[index] = args[index].clone()
    args[index].view(-1)[0] = float("-inf")
    return args


@pytest.mark.parametrize("name", [*MPO_SUMS, "chosen_token_logps"])
def test_mpo_names_the_non_finite_tensor(name):
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or inf"):
        mpo_loss(*mpo_inputs_with_inf(name), delta=0.0)


@pytest.mark.parametrize("name", MPO_SUMS)
def test_a_non_finite_sum_never_reaches_delta(name):
    # The stage's order: mean_implicit_reward refuses the batch before running.update sees it.
    running = RunningMean()
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or inf"):
        running.update(mean_implicit_reward(*mpo_inputs_with_inf(name)[:4]))
    assert running.count < 1  # a NaN never reached the running mean


def test_mpo_refuses_a_delta_that_is_not_one_finite_number():
    with pytest.raises(ValueError, match="delta must be one number"):
        mpo_loss(*mpo_inputs(), delta=torch.zeros(2))
    with pytest.raises(ValueError, match="^delta contains NaN or inf"):
        mpo_loss(*mpo_inputs(), delta=float("nan"))


def test_piece_functions_name_their_inputs():
    good, bad = torch.zeros(2), torch.tensor([0.0, float("nan")])
    with pytest.raises(ValueError, match="^rejected_logratios"):
        dpo_sigmoid_loss(good, bad, beta=0.1)
    with pytest.raises(ValueError, match="^chosen_logratios"):
        bco_pair_loss(bad, good, beta=0.1, delta=0.0)
    with pytest.raises(ValueError, match="^token_logps"):
        lm_loss(bad[None], torch.ones(1, 2))
    with pytest.raises(ValueError, match="^rewards"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)


def test_online_extras_name_their_non_finite_inputs():
    good, bad, mask = torch.zeros(2, 2), torch.tensor([[0.0, float("inf")], [0.0, 0.0]]), torch.ones(2, 2)
    with pytest.raises(ValueError, match="^ref_logps contains NaN or inf at kept"):
        k3_kl(good, bad, mask)
    with pytest.raises(ValueError, match="^engine_logps contains NaN or inf at kept"):
        sequence_is_weights(good, bad, mask, cap=2.0)
    with pytest.raises(ValueError, match="cap=0.0 must be > 0"):
        sequence_is_weights(good, good, mask, cap=0.0)


def test_summed_next_token_nll_shape_errors():
    logits, ids, mask = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"logits must be a \[B, T, V\] tensor"):
        summed_next_token_nll(logits[0], ids, mask)
    with pytest.raises(ValueError, match="^input_ids has shape"):
        summed_next_token_nll(logits, ids[:, :2], mask)
    with pytest.raises(ValueError, match="^loss_mask has shape"):
        summed_next_token_nll(logits, ids, mask[:1])


def test_shape_errors_name_the_argument():
    logps, old, adv, mask = policy_inputs()
    with pytest.raises(ValueError, match="^mask has shape"):
        gspo_loss(logps, old, adv, mask[:, :2])
    with pytest.raises(ValueError, match="^advantages has shape"):
        gspo_loss(logps, old, adv[:, None].expand(2, 3), mask)  # per-token advantages need variant="token"
    with pytest.raises(ValueError, match="^old_logps has shape"):
        grpo_loss(logps, old[:1], adv, mask)
    with pytest.raises(ValueError, match="^rejected_logratios has shape"):
        dpo_sigmoid_loss(torch.zeros(2), torch.zeros(3), beta=0.1)
    with pytest.raises(ValueError, match="unknown GSPO variant"):
        gspo_loss(logps, old, adv, mask, variant="tokens")
    with pytest.raises(ValueError, match="^ref_logps has shape"):
        k3_kl(logps, old[:, :2], mask)
    with pytest.raises(ValueError, match="^mask has shape"):
        sequence_is_weights(logps, old, mask[:1], cap=2.0)


def test_advantage_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.ones(6), 4)
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.ones(4), 2, scale="std")


def test_aggregation_errors_list_the_valid_modes():
    loss_mat, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum, token-sum"):
        aggregate(loss_mat, mask, "mean")
    with pytest.raises(ValueError, match="only applies to 'seq-mean-token-sum'"):
        grpo_loss(*policy_inputs(), aggregation="token-mean", norm_length=8)


def test_padding_may_hold_non_finite_values():
    logps, old, adv, mask = policy_inputs()
    mask[1, 2] = 0
    logps[1, 2] = float("nan")
    old[1, 2] = -float("inf")
    loss, _ = gspo_loss(logps, old, adv, mask)
    assert torch.isfinite(loss)
