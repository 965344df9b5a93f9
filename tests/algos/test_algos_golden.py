"""Golden values (tests/golden/*.json) against the code, and the golden files against the independent reference.

The JSON files carry hand derivations; `loss_reference.py` recomputes every expected number in plain float64
Python on each run, so a golden value can neither drift nor have come from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from algos import loss_reference as ref
from algos.mpo_step import mpo_step

from cascade_rl.algos import (
    RunningMean,
    bco_pair_loss,
    dpo_sigmoid_loss,
    group_advantages,
    grpo_loss,
    gspo_loss,
    k3_kl,
    lm_loss,
    mean_implicit_reward,
    mpo_loss,
    rloo_advantages,
    sequence_is_weights,
    summed_next_token_nll,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MPO_ARGS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "chosen_token_logps",
    "chosen_mask",
)


def load(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def t(values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(actual: torch.Tensor, expected: float, dtype=torch.float64) -> None:
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


def test_golden_files_match_reference():
    mpo = load("mpo")
    batches = []
    for call in mpo["calls"]:
        x = call["inputs"]
        h_c = [p - r for p, r in zip(x["policy_chosen_logps"], x["ref_chosen_logps"])]
        h_r = [p - r for p, r in zip(x["policy_rejected_logps"], x["ref_rejected_logps"])]
        batches.append({"h_c": h_c, "h_r": h_r, "token_logps": x["chosen_token_logps"], "mask": x["chosen_mask"]})
    for call, expected in zip(mpo["calls"], ref.mpo_calls(batches, mpo["beta"], tuple(mpo["weights"]))):
        for key, value in expected.items():
            assert math.isclose(call["expected"][key], value, rel_tol=1e-12, abs_tol=1e-15), key
    assert [c["expected"]["delta"] for c in mpo["calls"]] == pytest.approx([0.1, 0.25, 0.1], abs=1e-15)

    gspo = load("gspo")
    x = gspo["inputs"]
    for case in gspo["cases"]:
        value = ref.gspo(x["logps"], x["old_logps"], x["advantages"], x["mask"], case["clip_low"], case["clip_high"])
        assert math.isclose(case["expected"]["loss"], value, rel_tol=1e-12)

    grpo = load("grpo")
    x = grpo["inputs"]
    losses = ref.token_losses(x["logps"], x["old_logps"], x["advantages"], x["mask"], 0.2, 0.2)
    for mode, value in grpo["expected"].items():
        assert math.isclose(value, ref.aggregate(losses, mode), rel_tol=1e-12), mode

    adv = load("advantages")
    for scale, values in adv["expected"].items():
        assert values == pytest.approx(ref.group_advantages(adv["rewards"], 4, scale, 1e-6), rel=1e-12)
    assert adv["expected_rloo"] == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0])

    kl = load("kl")
    x = kl["inputs"]
    assert math.isclose(kl["expected"], ref.k3_kl(x["logps"], x["ref_logps"], x["mask"]), rel_tol=1e-12)
    by_hand = (1 / 6 + (math.exp(-1) + math.exp(2) - 3) / 2 + 0) / 3  # the file's 'hand' line
    assert math.isclose(kl["expected"], by_hand, rel_tol=1e-12)

    weights = load("importance")
    x = weights["inputs"]
    expected = ref.sequence_is_weights(x["trainer_logps"], x["engine_logps"], x["mask"], x["cap"])
    assert weights["expected"] == pytest.approx(expected, rel=1e-12)
    assert weights["expected"] == pytest.approx([math.exp(0.2), 2.0, math.exp(-0.6)], rel=1e-12)

    nll = load("nll")
    x = nll["inputs"]
    total, correct = ref.summed_next_token_nll(x["logits"], x["input_ids"], x["loss_mask"])
    assert math.isclose(nll["expected"]["nll"], total, rel_tol=1e-12) and nll["expected"]["correct_tokens"] == correct
    assert math.isclose(total, math.log(35 / 3), rel_tol=1e-12) and correct == 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mpo_three_calls_delta_evolves(dtype):
    golden = load("mpo")
    running = RunningMean()
    for step, call in enumerate(golden["calls"], start=1):
        x = call["inputs"]
        tensors = [t(x[name], dtype) for name in MPO_ARGS[:5]] + [t(x["chosen_mask"], torch.long)]
        loss, metrics = mpo_step(*tensors, running=running, beta=golden["beta"], weights=tuple(golden["weights"]))
        close(loss, call["expected"]["loss"], dtype)
        for key in ("dpo_loss", "bco_loss", "lm_loss", "delta"):
            close(metrics[key].to(dtype), call["expected"][key], dtype)
        assert running.count == pytest.approx(step)  # one update per call, single process
    # δ after three calls: the plain average of the three batch means 0.1, 0.4, -0.2.
    close(running.mean.to(dtype), (0.1 + 0.4 - 0.2) / 3, dtype)


def test_mean_implicit_reward_is_the_batch_mean_of_beta_h():
    golden = load("mpo")
    # The golden calls' batch means of β·h (their 'hand' lines): 0.1, 0.4, -0.2.
    for call, expected in zip(golden["calls"], (0.1, 0.4, -0.2)):
        sums = [t(call["inputs"][name]) for name in MPO_ARGS[:4]]
        close(mean_implicit_reward(*sums, beta=golden["beta"]), expected)


def test_mpo_loss_twice_on_one_batch_gives_the_same_loss():
    x = load("mpo")["calls"][1]["inputs"]
    tensors = [t(x[name]) for name in MPO_ARGS[:5]] + [t(x["chosen_mask"], torch.long)]
    first, first_metrics = mpo_loss(*tensors, delta=0.25)
    second, second_metrics = mpo_loss(*tensors, delta=0.25)
    assert torch.equal(first, second) and torch.equal(first_metrics["delta"], second_metrics["delta"])
    # δ = 0.25 is the second golden call's δ: the same loss as that call of the stage's running update.
    close(first, load("mpo")["calls"][1]["expected"]["loss"])


def test_mpo_reward_metrics_by_hand():
    x = load("mpo")["calls"][0]["inputs"]
    tensors = [t(x[name]) for name in MPO_ARGS[:5]] + [t(x["chosen_mask"], torch.long)]
    _, metrics = mpo_step(*tensors, running=RunningMean())
    # β·h_c = [0.3, 0.1], β·h_r = [-0.1, 0.1]: chosen beats rejected in pair 1 only (pair 2 ties).
    close(metrics["chosen_reward"], 0.2)
    close(metrics["rejected_reward"], 0.0)
    close(metrics["reward_accuracy"], 0.5)
    close(metrics["reward_margin"], 0.2)


def test_dpo_and_bco_pieces():
    pieces = load("mpo")["pieces"]
    x = pieces["inputs"]
    h_c, h_r = t(x["chosen_logratios"]), t(x["rejected_logratios"])
    torch.testing.assert_close(dpo_sigmoid_loss(h_c, h_r, beta=x["beta"]), t(pieces["expected"]["dpo"]))
    bco = bco_pair_loss(h_c, h_r, beta=x["beta"], delta=torch.tensor(x["delta"]))
    torch.testing.assert_close(bco, t(pieces["expected"]["bco"]))
    # Equal log-ratios: log 2 for DPO; with β·h = δ both BCO halves are log 2.
    zero = torch.zeros(1, dtype=torch.float64)
    close(dpo_sigmoid_loss(zero, zero, beta=0.1)[0], math.log(2))
    close(bco_pair_loss(zero + 5.0, zero + 5.0, beta=0.1, delta=0.5)[0], 2 * math.log(2))


def test_lm_loss_token_mean_by_hand():
    token_logps = t([[-1.0, -2.0, -3.0], [-0.5, float("nan"), -9.0]])  # masked NaN must not leak
    mask = t([[1, 1, 0], [1, 0, 0]], torch.long)
    close(lm_loss(token_logps, mask), 3.5 / 3)
    close(lm_loss(token_logps, torch.zeros_like(mask)), 0.0)  # nothing kept: 0, not NaN


@pytest.mark.parametrize("variant", ["sequence", "token"])
@pytest.mark.parametrize("case_index", [0, 1])
def test_gspo_golden(variant, case_index):
    golden = load("gspo")
    case, x = golden["cases"][case_index], golden["inputs"]
    args = (t(x["logps"]), t(x["old_logps"]), t(x["advantages"]), t(x["mask"], torch.long))
    kwargs = {"clip_low": case["clip_low"], "clip_high": case["clip_high"], "variant": variant}
    if case["clip_low"] >= 0.05:
        with pytest.warns(UserWarning, match="GRPO-scale"):
            loss, metrics = gspo_loss(*args, **kwargs)
    else:
        loss, metrics = gspo_loss(*args, **kwargs)
    close(loss, case["expected"]["loss"])
    close(metrics["clip_fraction"], golden["clip_fractions"][case_index])
    for key in ("ratio_mean", "ratio_min", "ratio_max"):
        close(metrics[key], case["expected"][key])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum"])
def test_grpo_golden(mode):
    golden = load("grpo")
    x = golden["inputs"]
    args = (t(x["logps"]), t(x["old_logps"]), t(x["advantages"]), t(x["mask"], torch.long))
    loss, metrics = grpo_loss(*args, clip_low=0.2, clip_high=0.2, aggregation=mode)
    close(loss, golden["expected"][mode])
    close(metrics["clip_fraction"], golden["clip_fraction"])
    if mode == "seq-mean-token-sum":
        loss, _ = grpo_loss(*args, aggregation=mode, norm_length=golden["dr_grpo_norm_length"])
        close(loss, golden["expected_dr_grpo"])


def test_grpo_per_token_advantages_equal_broadcast():
    x = load("grpo")["inputs"]
    args = (t(x["logps"]), t(x["old_logps"]))
    mask = t(x["mask"], torch.long)
    per_seq = t(x["advantages"])
    per_token = per_seq[:, None].expand(-1, mask.shape[1]).clone()
    a, _ = grpo_loss(*args, per_seq, mask)
    b, _ = grpo_loss(*args, per_token, mask)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_golden(scale):
    golden = load("advantages")
    out = group_advantages(t(golden["rewards"]), golden["group_size"], scale=scale, eps=golden["eps"])
    torch.testing.assert_close(out, t(golden["expected"][scale]), rtol=1e-12, atol=1e-12)


def test_rloo_golden_and_identity():
    golden = load("advantages")
    rewards = t(golden["rewards"])
    torch.testing.assert_close(rloo_advantages(rewards, 4), t(golden["expected_rloo"]))
    # RLOO = G/(G-1) · (r - group mean).
    torch.testing.assert_close(rloo_advantages(rewards, 4), group_advantages(rewards, 4, scale="none") * 4 / 3)


def test_group_of_equal_rewards_gives_zero_advantage():
    out = group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2)
    torch.testing.assert_close(out, torch.zeros(4))


def test_half_precision_inputs_compute_in_float32():
    x = load("gspo")["inputs"]
    args = (t(x["logps"], torch.bfloat16), t(x["old_logps"], torch.bfloat16))
    loss, metrics = gspo_loss(*args, t(x["advantages"], torch.bfloat16), t(x["mask"], torch.long))
    assert loss.dtype == torch.float32 and metrics["ratio_mean"].dtype == torch.float32


def test_integer_rewards_are_accepted():
    golden = load("advantages")
    ints = torch.tensor([int(r) for r in golden["rewards"]])  # 0/1 correctness rewards often arrive as ints
    out = group_advantages(ints, golden["group_size"], scale="none")
    torch.testing.assert_close(out, t(golden["expected"]["none"], torch.float32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_k3_kl_golden_and_its_gradient(dtype):
    golden = load("kl")
    x = golden["inputs"]
    logps = t(x["logps"], dtype).requires_grad_(True)
    kl = k3_kl(logps, t(x["ref_logps"], dtype), t(x["mask"], torch.long))
    close(kl, golden["expected"], dtype)
    (grad,) = torch.autograd.grad(kl, logps)
    # ∂k3/∂logp = 1 - exp(d), divided by the row's kept tokens and by B = 3; masked slots get 0.
    expected = [
        [0.0, (1 - 2) / 9, (1 - 0.5) / 9],
        [(1 - math.exp(-1)) / 6, (1 - math.exp(2)) / 6, 0.0],
        [0.0, 0.0, 0.0],
    ]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(grad, t(expected, dtype), rtol=tol, atol=tol)


def test_k3_kl_of_a_policy_against_itself_is_zero():
    logps = -torch.rand(2, 4, dtype=torch.float64)
    close(k3_kl(logps, logps.clone(), torch.ones(2, 4)), 0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequence_is_weights_golden(dtype):
    golden = load("importance")
    x = golden["inputs"]
    mask = t(x["mask"], torch.long)
    weights = sequence_is_weights(t(x["trainer_logps"], dtype), t(x["engine_logps"], dtype), mask, cap=x["cap"])
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(weights, t(golden["expected"], dtype), rtol=tol, atol=tol)
    # A row with nothing kept gets exp(0) = 1.
    empty = sequence_is_weights(t(x["trainer_logps"]), t(x["engine_logps"]), torch.zeros_like(mask), cap=2.0)
    torch.testing.assert_close(empty, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_summed_next_token_nll_golden_and_its_gradient(dtype):
    golden = load("nll")
    x = golden["inputs"]
    logits = t(x["logits"], dtype).requires_grad_(True)
    nll, metrics = summed_next_token_nll(logits, t(x["input_ids"], torch.long), t(x["loss_mask"], torch.long))
    assert nll.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]  # bf16: ln 2 etc. rounded
    torch.testing.assert_close(nll, torch.tensor(golden["expected"]["nll"], dtype=nll.dtype), rtol=tol, atol=tol)
    assert int(metrics["correct_tokens"]) == golden["expected"]["correct_tokens"]
    (grad,) = torch.autograd.grad(nll, logits)
    # ∂nll/∂z = softmax(z) - onehot(target) on the three predicting positions, 0 on the junk ones.
    expected = torch.zeros(2, 3, 3, dtype=torch.float64)
    expected[0, 0] = t([1 / 2 - 1, 1 / 4, 1 / 4])
    expected[0, 1] = t([1 / 5, 3 / 5 - 1, 1 / 5])
    expected[1, 0] = t([4 / 7, 1 / 7, 2 / 7 - 1])
    torch.testing.assert_close(grad.double(), expected, rtol=tol, atol=tol)
