"""Pairs stage (offline, SPEC §2): MMPR preference pairs from a rollout store (rules: data_tools/pairs.py).

Writes two files, as InternVL does: correctness pairs (`out`) and format pairs (`format_out`, by default
`<out stem>_format_rules.jsonl` beside it), each with its own per-prompt cap; MPO trains on both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cascade_rl.config import check_choices
from cascade_rl.data import DataError
from cascade_rl.data_tools.pairs import AnswerRule, build_pairs, format_pairs_path, write_pairs
from cascade_rl.data_tools.store import RolloutStore


@dataclass(frozen=True)
class PairsStageConfig:
    """`cascade-rl pairs CONFIG`: MMPR pairs from a rollout store. Defaults are InternVL's: the `en_v2` answer rule,
    ≤ 15 correctness and ≤ 15 format pairs per prompt, seed 0. `answer_rule: strict` reads answers off a
    `\\boxed{}` or an `Answer:` line and makes no length rule (for tasks whose whole answer is a few characters)."""

    rollouts: str = ""
    out: str = ""
    format_out: str = ""
    answer_rule: AnswerRule = "internvl"
    max_pairs_per_prompt: int = 15
    max_format_pairs_per_prompt: int = 15
    seed: int = 0

    def __post_init__(self):
        check_choices(self)
        if not self.rollouts or not self.out:
            raise ValueError("rollouts (a store directory) and out (a pairs .jsonl path) are required")

    @property
    def format_path(self) -> Path:
        return Path(self.format_out) if self.format_out else format_pairs_path(self.out)


def run_pairs(config: PairsStageConfig) -> dict:
    store = RolloutStore(config.rollouts, readonly=True)
    pairs, format_pairs, summary = build_pairs(
        store.iter_records(),
        answer_rule=config.answer_rule,
        max_pairs_per_prompt=config.max_pairs_per_prompt,
        max_format_pairs_per_prompt=config.max_format_pairs_per_prompt,
        seed=config.seed,
    )
    path = write_pairs(config.out, pairs)
    format_path = write_pairs(config.format_path, format_pairs)
    result = {"pairs": len(pairs), "out": str(path), "format_out": str(format_path), **summary.as_dict()}
    Path(str(path) + ".summary.json").write_text(json.dumps(result, indent=2))
    if not pairs and not format_pairs:
        raise DataError(
            f"{config.rollouts}: no preference pair could be built ({summary.as_dict()}); a pair needs a prompt with "
            "both correct and incorrect samples: sample more per prompt (sampling.n) or use prompts of moderate "
            "difficulty",
            reason="no_pairs",
        )
    return result
