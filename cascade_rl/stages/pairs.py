"""Pairs stage (offline, SPEC §2): MMPR preference pairs from a rollout store (rules: data_tools/pairs.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cascade_rl.data import DataError
from cascade_rl.data_tools.pairs import build_pairs, write_pairs
from cascade_rl.data_tools.store import RolloutStore


@dataclass(frozen=True)
class PairsStageConfig:
    """`cascade-rl pairs CONFIG`: MMPR pairs from a rollout store (InternVL keeps ≤ 15 per prompt, seed 0)."""

    rollouts: str = ""
    out: str = ""
    max_pairs_per_prompt: int = 15
    seed: int = 0

    def __post_init__(self):
        if not self.rollouts or not self.out:
            raise ValueError("rollouts (a store directory) and out (a pairs .jsonl path) are required")


def run_pairs(config: PairsStageConfig) -> dict:
    store = RolloutStore(config.rollouts, readonly=True)
    pairs, summary = build_pairs(
        store.iter_records(), max_pairs_per_prompt=config.max_pairs_per_prompt, seed=config.seed
    )
    path = write_pairs(config.out, pairs)
    result = {"pairs": len(pairs), "out": str(path), **summary.as_dict()}
    Path(str(path) + ".summary.json").write_text(json.dumps(result, indent=2))
    if not pairs:
        raise DataError(
            f"{config.rollouts}: no preference pair could be built ({summary.as_dict()}); a pair needs a prompt with "
            "both correct and incorrect samples: sample more per prompt (sampling.n) or use prompts of moderate "
            "difficulty",
            reason="no_pairs",
        )
    return result
