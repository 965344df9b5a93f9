"""PassRateLedger: per-prompt rollout statistics (n, correct, mean reward, mean length, truncations).

Saved as JSON ({"format": "cascade_rl.pass_rate_ledger", "version": 1, "prompts": {prompt_id: stats}}) or
JSONL (one {"prompt_id": ..., **stats} per line), chosen by the file suffix. `stats` is
{"n", "n_correct", "pass_rate", "mean_reward", "mean_length", "truncations"}; pass_rate is written for
readers and recomputed on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade_rl.data.errors import DataError
from cascade_rl.data.io import atomic_write_json, atomic_write_jsonl, iter_jsonl
from cascade_rl.data_tools.records import RolloutRecord

FORMAT = "cascade_rl.pass_rate_ledger"


@dataclass
class PromptStats:
    """Counts and sums for one prompt; means are derived so that merging is exact (sums add)."""

    n: int = 0
    n_correct: int = 0
    reward_sum: float = 0.0
    length_sum: float = 0.0  # completion tokens
    truncations: int = 0  # finish_reason == "length"

    @property
    def pass_rate(self) -> float:
        return self.n_correct / self.n if self.n else 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.n if self.n else 0.0

    @property
    def mean_length(self) -> float:
        return self.length_sum / self.n if self.n else 0.0

    def add(self, record: RolloutRecord) -> None:
        """Count one rollout: correct, reward, length in tokens, truncated (finish_reason == "length")."""
        self.n += 1
        self.n_correct += int(record.correct)
        self.reward_sum += record.reward
        self.length_sum += record.num_tokens
        self.truncations += int(record.truncated)

    def __add__(self, other: PromptStats) -> PromptStats:
        """Counts sum; the means come out weighted by n because the sums add."""
        return PromptStats(
            self.n + other.n,
            self.n_correct + other.n_correct,
            self.reward_sum + other.reward_sum,
            self.length_sum + other.length_sum,
            self.truncations + other.truncations,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_correct": self.n_correct,
            "pass_rate": self.pass_rate,
            "mean_reward": self.mean_reward,
            "mean_length": self.mean_length,
            "truncations": self.truncations,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> PromptStats:
        """Rebuild from a saved entry (means times n give back the sums); bad entries raise DataError naming source."""
        try:
            n, n_correct, truncations = int(data["n"]), int(data["n_correct"]), int(data["truncations"])
            mean_reward, mean_length = float(data["mean_reward"]), float(data["mean_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{source}: bad ledger entry ({type(e).__name__}: {e}); expected n, n_correct, mean_reward, "
                "mean_length, truncations; rebuild the ledger from the rollout store",
                reason="bad_ledger",
            ) from e
        if not 0 <= n_correct <= n or not 0 <= truncations <= n:
            raise DataError(
                f"{source}: counts out of range (n={n}, n_correct={n_correct}, truncations="
                f"{truncations}); rebuild the ledger from the rollout store",
                reason="bad_ledger",
            )
        return cls(n, n_correct, mean_reward * n, mean_length * n, truncations)


class PassRateLedger:
    """prompt_id -> PromptStats, in first-seen order."""

    def __init__(self, stats: dict[str, PromptStats] | None = None) -> None:
        self.stats: dict[str, PromptStats] = dict(stats or {})

    def update_from_records(self, records: Iterable[RolloutRecord | dict[str, Any]]) -> int:
        """Add each record to its prompt's stats; returns how many were added.

        Every call adds: feeding the same records twice counts them twice. Build from a deduplicated source
        (`RolloutStore.iter_records()`), or use `from_records` for a fresh ledger.
        """
        added = 0
        for record in records:
            if isinstance(record, dict):
                record = RolloutRecord.from_dict(record)
            self.stats.setdefault(record.prompt_id, PromptStats()).add(record)
            added += 1
        return added

    @classmethod
    def from_records(cls, records: Iterable[RolloutRecord | dict[str, Any]]) -> PassRateLedger:
        """A fresh ledger over `records` (e.g. a RolloutStore, which yields each sample once)."""
        ledger = cls()
        ledger.update_from_records(records)
        return ledger

    def pass_rate(self, prompt_id: str) -> float:
        """n_correct / n for one prompt (KeyError if the prompt has no rollouts)."""
        return self.stats[prompt_id].pass_rate

    def merge(self, other: PassRateLedger) -> PassRateLedger:
        """A new ledger: per prompt, counts sum and means are weighted by n (e.g. two ranks, or two runs)."""
        merged = dict(self.stats)
        for prompt_id, stats in other.stats.items():
            merged[prompt_id] = merged[prompt_id] + stats if prompt_id in merged else stats
        return PassRateLedger(merged)

    def __len__(self) -> int:
        return len(self.stats)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.stats

    def __getitem__(self, prompt_id: str) -> PromptStats:
        return self.stats[prompt_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.stats)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as .json (one document) or .jsonl (one prompt per line)."""
        path = Path(path)
        if path.suffix == ".jsonl":
            return atomic_write_jsonl(path, ({"prompt_id": pid, **s.to_dict()} for pid, s in self.stats.items()))
        prompts = {pid: s.to_dict() for pid, s in self.stats.items()}
        return atomic_write_json(path, {"format": FORMAT, "version": 1, "prompts": prompts})

    @classmethod
    def load(cls, path: str | os.PathLike) -> PassRateLedger:
        """Read a ledger written by `save` (either form); bad entries raise DataError naming file:line."""
        path = Path(path)
        if path.suffix == ".jsonl":
            stats = {}
            for lineno, data in iter_jsonl(path):
                source = f"{path} line {lineno}"
                if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
                    raise DataError(
                        f"{source}: ledger line without a 'prompt_id'; fix or delete it", reason="bad_ledger"
                    )
                stats[data["prompt_id"]] = PromptStats.from_dict(data, source)
            return cls(stats)
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("prompts"), dict):
            raise DataError(
                f"{path}: not a pass-rate ledger (expected format '{FORMAT}'); pass the file written by "
                "PassRateLedger.save",
                reason="bad_ledger",
            )
        return cls({pid: PromptStats.from_dict(s, f"{path} prompt '{pid}'") for pid, s in doc["prompts"].items()})
