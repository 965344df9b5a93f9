"""Offline data work, importable as ``cascade_rl.data_tools``: the rollout store, the pass-rate ledger and
difficulty filter, preference pairs with InternVL's rules, DropoutNTP, and MMPR import/export."""

from cascade_rl.data_tools.dropout_ntp import DropoutSummary, dropout_ntp_pairs, truncate_words
from cascade_rl.data_tools.filter import SelectSummary, filter_by_pass_rate, select_prompt_rows
from cascade_rl.data_tools.ledger import PassRateLedger, PromptStats
from cascade_rl.data_tools.mmpr import MMPRDataset, MMPRSummary, load_mmpr, read_mmpr_meta, write_mmpr
from cascade_rl.data_tools.pairs import PairBuildSummary, build_pairs, write_pairs
from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.data_tools.store import RolloutStore

__all__ = [
    "DropoutSummary",
    "MMPRDataset",
    "MMPRSummary",
    "PairBuildSummary",
    "PassRateLedger",
    "PromptStats",
    "RolloutRecord",
    "RolloutStore",
    "SelectSummary",
    "build_pairs",
    "dropout_ntp_pairs",
    "filter_by_pass_rate",
    "load_mmpr",
    "read_mmpr_meta",
    "select_prompt_rows",
    "truncate_words",
    "write_mmpr",
    "write_pairs",
]
