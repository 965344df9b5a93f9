"""RolloutRecord: one scored rollout as the RolloutStore keeps it (Rollout fields + reward info + prompt meta).

One record is one JSON line:
  {"prompt_id": str, "sample_index": int, "text": str, "token_ids": [int], "logprobs": [float],
   "finish_reason": "stop" | "length", "reward": float, "correct": bool, "rewards": {name: float | null},
   "parseable": bool, "answer_pred": str | null, "question": str, "images": [str], "answer": any, "meta": {...}}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from cascade_rl.data.errors import DataError

if TYPE_CHECKING:  # importing cascade_rl.rollout loads the engines (torch, transformers): keep records light
    from cascade_rl.rollout.base import Rollout

_REQUIRED = ("prompt_id", "sample_index", "text", "token_ids", "logprobs", "finish_reason", "reward", "correct")


@dataclass
class RolloutRecord:
    """One scored rollout.

    reward: the total reward (float; the scorer decides how None parts count). rewards: per reward function,
    None where it did not apply. correct: graded correct (pair positive). parseable: False when no answer could
    be parsed (a pair negative, never correct). answer_pred: the parsed answer, if the scorer exposes it (pairs
    compare it for the substring rule). question/images/answer: the prompt, images relative to the image root.
    meta: the Rollout's meta, untouched.
    """

    prompt_id: str
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    reward: float
    correct: bool
    rewards: dict[str, float | None] = field(default_factory=dict)
    parseable: bool = True
    answer_pred: str | None = None
    question: str = ""
    images: list[str] = field(default_factory=list)
    answer: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.correct and not self.parseable:
            raise ValueError(f"record ({self.prompt_id}, {self.sample_index}): correct=True but parseable=False")

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt_id, self.sample_index)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @classmethod
    def from_rollout(
        cls,
        rollout: Rollout,
        *,
        reward: float,
        correct: bool,
        rewards: dict[str, float | None] | None = None,
        parseable: bool = True,
        answer_pred: str | None = None,
        question: str = "",
        images: list[str] | None = None,
        answer: Any = None,
    ) -> RolloutRecord:
        """Join an engine's Rollout with its scores and its prompt's columns."""
        return cls(
            prompt_id=rollout.prompt_id,
            sample_index=rollout.sample_index,
            text=rollout.text,
            token_ids=list(rollout.token_ids),
            logprobs=list(rollout.logprobs),
            finish_reason=rollout.finish_reason,
            reward=float(reward),
            correct=bool(correct),
            rewards=dict(rewards or {}),
            parseable=parseable,
            answer_pred=answer_pred,
            question=question,
            images=list(images or []),
            answer=answer,
            meta={k: v for k, v in rollout.meta.items() if k not in ("question", "images", "answer")},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "record") -> RolloutRecord:
        """Build from a parsed JSON line; a missing field or unknown key raises DataError naming `source`."""
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}", reason="bad_record")
        missing = [k for k in _REQUIRED if k not in data]
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if missing or unknown:
            raise DataError(
                f"{source}: not a rollout record (missing {missing}, unknown {unknown}); "
                "was this file written by RolloutStore?",
                reason="bad_record",
            )
        try:
            return cls(**data)
        except ValueError as e:
            raise DataError(f"{source}: {e}", reason="bad_record") from e
