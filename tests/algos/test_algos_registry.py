"""Registries by name, the uniform call of policy losses, and the library-wide contracts (no .item(), detached
metrics)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from algos.mpo_step import mpo_step

import cascade_rl.algos as algos
from cascade_rl.algos import registry


def test_builtin_names():
    assert algos.get_policy_loss("gspo") is algos.gspo_loss
    assert algos.get_policy_loss("grpo") is algos.grpo_loss
    assert algos.get_policy_loss("gspo_token") is algos.gspo_token_loss
    assert algos.get_advantage_estimator("grpo") is algos.group_advantages
    assert algos.get_advantage_estimator("rloo") is algos.rloo_advantages


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="unknown policy loss 'ppo'; valid names: grpo, gspo, gspo_token"):
        algos.get_policy_loss("ppo")
    with pytest.raises(KeyError, match="unknown advantage estimator 'gae'; valid names: grpo, rloo"):
        algos.get_advantage_estimator("gae")


def test_advantage_options_pass_what_the_estimator_takes():
    assert algos.advantage_options("grpo") == {"scale": "group", "eps": 1e-6}
    assert algos.advantage_options("grpo", scale="none", eps=1e-4) == {"scale": "none", "eps": 1e-4}
    assert algos.advantage_options("rloo") == {}  # rloo takes neither; the defaults are not an error


def test_advantage_options_refuse_bad_or_ignored_values():
    with pytest.raises(ValueError, match="scale 'std' is unknown; valid: group, batch, none"):
        algos.advantage_options("grpo", scale="std")
    with pytest.raises(ValueError, match="eps=0.0 must be > 0"):
        algos.advantage_options("grpo", eps=0.0)
    with pytest.raises(ValueError, match="'rloo' takes no scale, so scale='none' would be ignored"):
        algos.advantage_options("rloo", scale="none")
    with pytest.raises(KeyError, match="unknown advantage estimator 'gae'"):
        algos.advantage_options("gae")


@pytest.mark.parametrize("name", ["gspo", "gspo_token", "grpo"])
def test_every_policy_loss_takes_the_uniform_call(name):
    logps = (-torch.rand(3, 4)).requires_grad_(True)
    fn = algos.get_policy_loss(name)
    aggregation = "token-mean" if name == "grpo" else "seq-mean-token-mean"
    loss, metrics = fn(
        logps, logps.detach(), torch.tensor([1.0, 0.0, -1.0]), torch.ones(3, 4),
        clip_low=3e-4, clip_high=4e-4, aggregation=aggregation,
    )  # fmt: skip
    loss.backward()
    assert loss.dim() == 0 and logps.grad is not None
    assert {"clip_fraction", "ratio_mean", "ratio_min", "ratio_max"} <= set(metrics)
    assert all(not value.requires_grad for value in metrics.values())


def test_gspo_token_entry_is_the_token_variant():
    logps = (-torch.rand(2, 3)).requires_grad_(True)
    per_token_adv = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]])
    algos.get_policy_loss("gspo_token")(logps, logps.detach(), per_token_adv, torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):  # the sequence variant refuses per-token advantages
        algos.get_policy_loss("gspo")(logps, logps.detach(), per_token_adv, torch.ones(2, 3))


def test_register_and_refuse_duplicates(monkeypatch):
    # Private copies: the global tables are untouched whatever happens here.
    monkeypatch.setattr(registry, "POLICY_LOSSES", dict(registry.POLICY_LOSSES))
    monkeypatch.setattr(registry, "ADVANTAGE_ESTIMATORS", dict(registry.ADVANTAGE_ESTIMATORS))

    @registry.register_policy_loss("zero")
    def zero_loss(logps, old_logps, advantages, mask, *, clip_low, clip_high, aggregation):
        return logps.sum() * 0, {}

    @registry.register_advantage_estimator("raw")
    def raw(rewards, group_size):
        return rewards

    assert registry.get_policy_loss("zero") is zero_loss
    assert registry.get_advantage_estimator("raw") is raw
    with pytest.raises(ValueError, match="already registered"):
        registry.register_policy_loss("gspo")(zero_loss)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_advantage_estimator("grpo")(raw)
    registry.check_policy_loss_settings("zero", aggregation="token-sum", clip_low=0.2, clip_high=0.2)


def test_registration_in_a_test_leaves_global_tables_alone():
    assert set(algos.POLICY_LOSSES) == {"gspo", "gspo_token", "grpo"}
    assert set(algos.ADVANTAGE_ESTIMATORS) == {"grpo", "rloo"}


def test_mpo_metrics_are_detached():
    policy = [(-torch.rand(2)).requires_grad_(True) for _ in range(2)]
    token_logps = (-torch.rand(2, 3)).requires_grad_(True)
    loss, metrics = mpo_step(
        *policy, -torch.rand(2), -torch.rand(2), token_logps, torch.ones(2, 3), running=algos.RunningMean()
    )
    assert loss.requires_grad
    assert set(metrics) == {
        "dpo_loss", "bco_loss", "lm_loss", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin",
        "delta",
    }  # fmt: skip
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in metrics.values())


def test_library_never_calls_item():
    source_dir = Path(algos.__file__).parent
    # A call on a name or an expression (`x.item()`, `f(x).item()`); docstrings that mention `.item()` are fine.
    offenders = [p.name for p in source_dir.glob("*.py") if re.search(r"[\w)\]]\.item\(\)", p.read_text())]
    assert offenders == []
