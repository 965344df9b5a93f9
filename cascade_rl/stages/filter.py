"""Filter stage (SPEC §3): the prompts of moderate difficulty, by the pass rates the rollout stage measured."""

from __future__ import annotations

from dataclasses import dataclass

from cascade_rl.data import DataError
from cascade_rl.data_tools.filter import filter_by_pass_rate, select_prompt_rows
from cascade_rl.data_tools.ledger import PassRateLedger


@dataclass(frozen=True)
class FilterStageConfig:
    """`cascade-rl filter CONFIG`: prompts whose ledger pass rate lies in [low, high] (the MMPR-Tiny rule)."""

    ledger: str = ""
    prompts: str = ""
    out: str = ""
    low: float = 0.2
    high: float = 0.8

    def __post_init__(self):
        if not (self.ledger and self.prompts and self.out):
            raise ValueError("ledger, prompts and out are required")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 ≤ low ≤ high ≤ 1, got low={self.low}, high={self.high}")


def run_filter(config: FilterStageConfig) -> dict:
    ledger = PassRateLedger.load(config.ledger)
    keep = filter_by_pass_rate(ledger, low=config.low, high=config.high)
    if not keep:
        raise DataError(
            f"{config.ledger}: none of its {len(ledger)} prompts has a pass rate in [{config.low}, {config.high}]; "
            "the next stage would run on nothing: widen low / high",
            reason="no_rows",
        )
    summary = select_prompt_rows(config.prompts, keep, config.out)
    return {"ledger_prompts": len(ledger), "kept": len(keep), **vars(summary)}
