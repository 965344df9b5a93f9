"""Verifiable rewards, importable as ``cascade_rl.rewards``.

The contract is TRL's: ``fn(completions: list[str], **columns) -> list[float | None]``, ``None`` meaning "does
not apply". Built-ins: ``math``, ``iou``, ``giou``, ``grounding_accuracy``, ``click``, ``format``,
``think_format``; ``get_reward`` also loads ``"package.module:function"`` and entry-point plugins
(group ``cascade_rl.rewards``). ``RewardRunner`` runs several of them, weighted, in worker processes with a hard
per-sample timeout. See docs/rewards.md.
"""

from .contract import RewardFn, in_process
from .grounding import normalize_box
from .registry import BUILTIN_REWARDS, ENTRY_POINT_GROUP, available_rewards, get_reward
from .runner import RewardResult, RewardRunner

__all__ = [
    "RewardFn",
    "RewardResult",
    "RewardRunner",
    "BUILTIN_REWARDS",
    "ENTRY_POINT_GROUP",
    "available_rewards",
    "get_reward",
    "in_process",
    "normalize_box",
]
