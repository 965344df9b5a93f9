"""Name → function registries for policy losses and advantage estimators, so a recipe picks them in YAML.

Policy losses share one call: `fn(logps, old_logps, advantages, mask, *, clip_low, clip_high, aggregation)`
returning `(loss, metrics)`. Advantage estimators share `fn(rewards, group_size, **options) -> advantages`;
`advantage_options` picks, from a config's scale and eps, the options an estimator takes.
Register your own with the decorators; tests that add entries should use `monkeypatch.setitem` so the global
tables are restored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from cascade_rl.algos.advantages import DEFAULT_EPS, DEFAULT_SCALE, SCALES, group_advantages, rloo_advantages
from cascade_rl.algos.aggregation import check_aggregation
from cascade_rl.algos.checks import check_clip_range
from cascade_rl.algos.guardrails import check_gspo_settings
from cascade_rl.algos.policy import grpo_loss, gspo_loss, gspo_token_loss

PolicyLoss = Callable[..., Any]
AdvantageEstimator = Callable[..., Any]

POLICY_LOSSES: dict[str, PolicyLoss] = {"gspo": gspo_loss, "gspo_token": gspo_token_loss, "grpo": grpo_loss}
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {"grpo": group_advantages, "rloo": rloo_advantages}
# Config-time checks of a loss's scalar settings, keyed like POLICY_LOSSES; a loss without one gets the generic
# clip-range and aggregation checks.
SETTINGS_CHECKS: dict[str, Callable[..., None]] = {"gspo": check_gspo_settings, "gspo_token": check_gspo_settings}


def _lookup(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[..., Any]:
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(table))}")
    return table[name]


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as `name` ("gspo", "gspo_token", "grpo", or one you registered)."""
    return _lookup(POLICY_LOSSES, "policy loss", name)


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The advantage estimator registered as `name` ("grpo", "rloo", or one you registered)."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def _register(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[Callable], Callable]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered ({table[name].__qualname__}); pick another name")
        table[name] = fn
        return fn

    return decorator


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: make `fn` available as `get_policy_loss(name)`. Refuses a name already taken."""
    return _register(POLICY_LOSSES, "policy loss", name)


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make `fn` available as `get_advantage_estimator(name)`. Refuses a name already taken."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def check_policy_loss_settings(name: str, *, aggregation: str, clip_low: float, clip_high: float) -> None:
    """Validate a policy-loss choice without tensors (for a config's `__post_init__`).

    Raises KeyError for an unknown name, ValueError for a bad clip range or aggregation (GSPO: anything but
    seq-mean-token-mean, with the reason); warns for GSPO with a GRPO-scale clip range.
    """
    get_policy_loss(name)
    check = SETTINGS_CHECKS.get(name)
    if check is not None:
        check(aggregation=aggregation, clip_low=clip_low, clip_high=clip_high)
        return
    check_clip_range(clip_low, clip_high)
    check_aggregation(aggregation)


def advantage_options(name: str, *, scale: str = DEFAULT_SCALE, eps: float = DEFAULT_EPS) -> dict[str, Any]:
    """The keyword options to call the estimator `name` with, from a config's scale and eps (validated).

    scale: "group", "batch" or "none" (see `group_advantages`); eps > 0. An estimator receives the options its
    signature names ("grpo": scale and eps; "rloo": neither). Raises KeyError for an unknown name, ValueError for
    a bad value or for a non-default value the estimator would ignore (e.g. scale="none" with "rloo").
    """
    estimator = get_advantage_estimator(name)
    if scale not in SCALES:
        raise ValueError(f"advantage scale {scale!r} is unknown; valid: {', '.join(SCALES)} ('none' is Dr.GRPO)")
    if not eps > 0:
        raise ValueError(f"advantage eps={eps} must be > 0: a group of equal rewards would divide 0 by 0")
    options, defaults = {"scale": scale, "eps": eps}, {"scale": DEFAULT_SCALE, "eps": DEFAULT_EPS}
    taken = inspect.signature(estimator).parameters
    ignored = [key for key, value in options.items() if key not in taken and value != defaults[key]]
    if ignored:
        given = ", ".join(f"{key}={options[key]!r}" for key in ignored)
        raise ValueError(
            f"advantage estimator {name!r} takes no {' or '.join(ignored)}, so {given} would be ignored; leave "
            f"advantage_scale / advantage_eps at {DEFAULT_SCALE!r} / {DEFAULT_EPS} or use an estimator that takes "
            "them ('grpo')"
        )
    return {key: value for key, value in options.items() if key in taken}
