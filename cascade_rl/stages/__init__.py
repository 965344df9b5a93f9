"""The stages, one file each, and the one table that names them (the CLI's subcommands and the cascade's order).

Each stage is `run_<stage>(config)` over a frozen config dataclass; the table imports a stage only when it is
used, so `validate` and `--help` load no model library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A stage: `cascade_rl.stages.<module>.<config>` filled from YAML, then `<run>(config)` called."""

    name: str
    module: str
    config: str
    run: str
    help: str
    in_default_cascade: bool = True  # listed in a recipe's `stages` when the recipe sets none

    @property
    def section(self) -> str:
        """Its recipe section's key (a YAML key and dataclass field: no hyphen)."""
        return self.name.replace("-", "_")

    def load(self) -> tuple[type, Callable[[Any], dict]]:
        module = importlib.import_module(f"cascade_rl.stages.{self.module}")
        return getattr(module, self.config), getattr(module, self.run)


_TABLE = [
    Stage("sft", "sft", "SFTConfig", "run_sft", "supervised warm-up on rows with a `response` column"),
    Stage(
        "rollout",
        "rollout",
        "RolloutStageConfig",
        "run_rollouts",
        "sample, score and store rollouts; write the ledger",
    ),
    Stage("pairs", "pairs", "PairsStageConfig", "run_pairs", "build MMPR preference pairs from a rollout store"),
    Stage(
        "dropout-ntp",
        "dropout_ntp",
        "DropoutNTPConfig",
        "run_dropout_ntp",
        "pairs for prompts without ground truth: a response vs. its truncation continued without the image",
        in_default_cascade=False,
    ),
    Stage("mpo", "mpo", "MPOConfig", "run_mpo", "train on preference pairs with MPO (DPO + BCO + LM)"),
    Stage("filter", "filter", "FilterStageConfig", "run_filter", "keep prompts whose pass rate lies in [low, high]"),
    Stage("gspo", "gspo", "GSPOConfig", "run_gspo", "online RL with GSPO: rollouts, rewards, group advantages"),
    Stage("eval", "eval", "EvalConfig", "run_eval", "score a checkpoint on a held-out prompt file"),
]
STAGES: dict[str, Stage] = {stage.name: stage for stage in _TABLE}
STAGE_ORDER = tuple(STAGES)  # the cascade's order
DEFAULT_STAGES = tuple(stage.name for stage in _TABLE if stage.in_default_cascade)
# The cascade's eval stage evaluates every checkpoint of the lineage with the same settings.
CASCADE_EVAL = Stage("eval", "eval", "EvalSuite", "run_evals", "evaluate each checkpoint of the lineage")
