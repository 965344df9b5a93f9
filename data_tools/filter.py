"""The difficulty filter: prompts of moderate pass rate go to the online stage (MMPR-Tiny's rule, SPEC §3)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_rl.data.errors import DataError
from cascade_rl.data.io import atomic_write_jsonl
from cascade_rl.data.reader import iter_raw_records, row_from_record
from cascade_rl.data_tools.ledger import PassRateLedger


def filter_by_pass_rate(
    ledger: PassRateLedger, low: float = 0.2, high: float = 0.8, *, min_samples: int = 1
) -> list[str]:
    """Prompt ids with low <= pass_rate <= high (both bounds inclusive), in ledger order.

    Inclusive because MMPR-Tiny keeps queries whose accuracy "falls between 0.2 and 0.8": with 5 or 10 samples,
    a pass rate of exactly 0.2 or 0.8 is common and is kept. Prompts with fewer than `min_samples` rollouts
    are left out (a pass rate from 1 sample says little).
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    return [pid for pid, s in ledger.stats.items() if s.n >= max(min_samples, 1) and low <= s.pass_rate <= high]


@dataclass
class SelectSummary:
    n_rows: int = 0
    n_selected: int = 0
    n_unreadable: int = 0  # rows without a usable id (they cannot have been rolled out either)
    missing_ids: list[str] = field(default_factory=list)  # asked for, not found in the prompt file


def select_prompt_rows(
    prompt_path: str | os.PathLike, prompt_ids: list[str] | set[str], out_path: str | os.PathLike
) -> SelectSummary:
    """Copy the rows of `prompt_path` whose prompt id is in `prompt_ids` to `out_path` (jsonl, atomic).

    Rows keep every original column and their file order; ids are computed as `read_prompts` does
    (the `id` column, else the hash of images and question), so they match the ledger's.
    """
    wanted = set(prompt_ids)
    summary = SelectSummary()
    selected: list[dict[str, Any]] = []
    found: set[str] = set()
    for source, record in iter_raw_records(prompt_path):
        summary.n_rows += 1
        try:
            if isinstance(record, DataError):
                raise record
            row_id = row_from_record(record, source).id
        except DataError:
            summary.n_unreadable += 1
            continue
        if row_id in wanted:
            selected.append(record)
            found.add(row_id)
    atomic_write_jsonl(Path(out_path), selected)
    summary.n_selected = len(selected)
    summary.missing_ids = sorted(wanted - found)
    return summary
