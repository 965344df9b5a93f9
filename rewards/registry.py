"""Finding reward functions: built-ins by name, user code by ``"package.module:function"``, plugins by entry point.

A reward function follows TRL's contract: ``fn(completions: list[str], **columns) -> list[float | None]``, one
value per completion, ``None`` meaning "does not apply". Dataset columns arrive as keyword lists.

Installed packages add rewards through the entry-point group ``cascade_rl.rewards``::

    [project.entry-points."cascade_rl.rewards"]
    my_reward = "my_pkg.rewards:my_reward"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Mapping

from .contract import RewardFn

__all__ = ["get_reward", "available_rewards", "check_reward_kwargs", "BUILTIN_REWARDS", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "cascade_rl.rewards"


# Built-ins are imported on first use: "math" pulls in sympy, which the cheap rewards do not need.
BUILTIN_REWARDS: dict[str, str] = {
    "math": "cascade_rl.rewards.math_reward:math_reward",
    "iou": "cascade_rl.rewards.grounding:iou",
    "giou": "cascade_rl.rewards.grounding:giou",
    "grounding_accuracy": "cascade_rl.rewards.grounding:grounding_accuracy",
    "click": "cascade_rl.rewards.click:click",
    "format": "cascade_rl.rewards.format_reward:format_reward",
    "think_format": "cascade_rl.rewards.format_reward:think_format_reward",
    "geo3k": "cascade_rl.rewards.geo3k:geo3k_reward",
    "relaxed_accuracy": "cascade_rl.rewards.graders:relaxed_accuracy",
    "vqa_score": "cascade_rl.rewards.graders:vqa_score",
    "choice": "cascade_rl.rewards.graders:choice",
    "anls": "cascade_rl.rewards.graders:anls",
}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_rewards() -> list[str]:
    """Names ``get_reward`` accepts: the built-ins, then installed plugins, sorted."""
    plugins = set(_entry_points()) - set(BUILTIN_REWARDS)
    return sorted(BUILTIN_REWARDS) + sorted(plugins)


def _load_path(path: str) -> Callable:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"reward path {path!r} must look like 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {path!r}: cannot import module {module_name!r} ({e})") from e
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"reward {path!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"reward {path!r} is a {type(obj).__name__}, not a function")
    return obj


def get_reward(name_or_path: str) -> RewardFn:
    """The reward function for a built-in name, a ``"package.module:function"`` path, or a plugin name.

    Built-in names win over a plugin of the same name. An unknown name raises ``ValueError`` listing the valid ones.

    >>> get_reward("format").__name__
    'format_reward'
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"get_reward takes a name or 'module:function' string, got {type(name_or_path).__name__}")
    if name_or_path in BUILTIN_REWARDS:
        return _load_path(BUILTIN_REWARDS[name_or_path])
    if ":" in name_or_path:
        return _load_path(name_or_path)
    plugins = _entry_points()
    if name_or_path in plugins:
        loaded = plugins[name_or_path].load()
        if not callable(loaded):
            raise ValueError(f"entry point {name_or_path!r} in group {ENTRY_POINT_GROUP!r} is not callable")
        return loaded
    raise ValueError(
        f"unknown reward {name_or_path!r}; valid names: {', '.join(available_rewards())} "
        f"(or a 'package.module:function' path, or a plugin in entry-point group {ENTRY_POINT_GROUP!r})"
    )


def keyword_parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    """The parameters a reward's ``kwargs`` may bind: every named one after the completions."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name: p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_reward_kwargs(name: str, fn: Callable, kwargs: Mapping[str, object]) -> None:
    """Refuse a ``kwargs`` key that ``fn`` has no named parameter for, even when it takes ``**columns``: a
    misspelled YAML key must not vanish into the catch-all.

    >>> check_reward_kwargs("iou", get_reward("iou"), {"threshold": 0.7})
    Traceback (most recent call last):
    ...
    ValueError: reward 'iou' has no parameter(s) ['threshold']; its options: (none); its columns: bbox
    """
    named = keyword_parameters(fn)
    unknown = sorted(set(kwargs) - set(named))
    if unknown:
        options = [f"{p.name}={p.default!r}" for p in named.values() if p.default is not p.empty]
        columns = [p.name for p in named.values() if p.default is p.empty]
        raise ValueError(
            f"reward {name!r} has no parameter(s) {unknown}; its options: {', '.join(options) or '(none)'}; "
            f"its columns: {', '.join(columns) or '(none)'}"
        )
