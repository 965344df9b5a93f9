"""Loss library: pure functions of tensors (MPO pieces, GSPO / GSPO-token / GRPO, advantages, aggregation, the
k3 KL penalty, engine/trainer importance weights and the SFT next-token NLL).

Formulas, sources and departures: docs/losses.md and each function's docstring. Every loss returns plain
tensors, metrics as detached tensors; nothing calls `.item()`.
"""

from cascade_rl.algos.advantages import group_advantages, rloo_advantages
from cascade_rl.algos.aggregation import AGGREGATIONS, aggregate
from cascade_rl.algos.guardrails import check_gspo_settings
from cascade_rl.algos.importance import sequence_is_weights
from cascade_rl.algos.kl import k3_kl
from cascade_rl.algos.mpo import bco_pair_loss, dpo_sigmoid_loss, lm_loss, mean_implicit_reward, mpo_loss
from cascade_rl.algos.nll import summed_next_token_nll
from cascade_rl.algos.policy import grpo_loss, gspo_loss, gspo_token_loss
from cascade_rl.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    advantage_options,
    check_policy_loss_settings,
    get_advantage_estimator,
    get_policy_loss,
    register_advantage_estimator,
    register_policy_loss,
)
from cascade_rl.algos.running import RunningMean

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "POLICY_LOSSES",
    "RunningMean",
    "advantage_options",
    "aggregate",
    "bco_pair_loss",
    "check_gspo_settings",
    "check_policy_loss_settings",
    "dpo_sigmoid_loss",
    "get_advantage_estimator",
    "get_policy_loss",
    "group_advantages",
    "grpo_loss",
    "gspo_loss",
    "gspo_token_loss",
    "k3_kl",
    "lm_loss",
    "mean_implicit_reward",
    "mpo_loss",
    "register_advantage_estimator",
    "register_policy_loss",
    "rloo_advantages",
    "sequence_is_weights",
    "summed_next_token_nll",
]
