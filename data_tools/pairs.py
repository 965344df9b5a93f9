"""build_pairs: preference pairs from scored rollouts, with InternVL's MMPR correctness rules (SPEC §2).

Rules (from InternVL's `mmpr_data_pipeline_correctness_postprocess.py`), per key (images, question, answer):
- positives are correct rollouts; negatives are incorrect ones, unparseable ones included;
- candidate pairs are the Cartesian product positives x negatives;
- a pair is skipped when the chosen answer is a case-insensitive substring of the rejected one. InternVL
  compares the *parsed* answers; we do the same when both records carry `answer_pred`, and compare the full
  response texts otherwise;
- identical (chosen, rejected) texts within a key are kept once;
- at most `max_pairs_per_prompt` (InternVL: 15, or 3 for files over 500K lines) are kept by seeded sampling;
- keys with only correct, or only wrong, rollouts give no pairs and are counted.
Departures: InternVL deduplicates after sampling (so a key can end with fewer than 15 pairs) and writes
format negatives to a second file with their own cap; we deduplicate before sampling and pool both kinds of
negative. Sampling uses random.Random seeded by (seed, key), so a key's pairs do not depend on record order
or on the other keys.

Output rows are MMPR jsonl rows: {"image": str | [str] (absent without images), "question": str (with
`<image>` placeholders), "chosen": str, "rejected": str, "answer_gt": any, "chosen_meta": {...},
"rejected_meta": {...}}, plus "system_prompt" when the prompt row had its own (MPO then trains under it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cascade_rl.data.io import atomic_write_jsonl
from cascade_rl.data.rows import with_image_placeholders
from cascade_rl.data_tools.records import RolloutRecord

Key = tuple[tuple[str, ...], str, str]  # (images, question, json(answer))


@dataclass
class PairBuildSummary:
    """Counts from one build_pairs call (records, keys, pairs, and every reason a candidate was dropped)."""

    n_records: int = 0
    n_positive: int = 0
    n_negative: int = 0
    n_unparseable: int = 0  # included in n_negative
    n_keys: int = 0
    all_correct_keys: int = 0
    all_wrong_keys: int = 0
    keys_without_pairs: int = 0  # had both kinds, but every candidate was skipped
    skipped_substring: int = 0
    duplicates: int = 0
    capped: int = 0  # candidates dropped by max_pairs_per_prompt
    n_pairs: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


def _key(record: RolloutRecord) -> Key:
    return (tuple(record.images), record.question, json.dumps(record.answer, sort_keys=True, ensure_ascii=False))


def _entailed(chosen: RolloutRecord, rejected: RolloutRecord) -> bool:
    """True when the chosen answer is a case-insensitive substring of the rejected one (the pair is ambiguous)."""
    if chosen.answer_pred is not None and rejected.answer_pred is not None:
        return chosen.answer_pred.lower() in rejected.answer_pred.lower()
    return chosen.text.lower() in rejected.text.lower()


def _meta(record: RolloutRecord) -> dict[str, Any]:
    return {
        "prompt_id": record.prompt_id,
        "sample_index": record.sample_index,
        "reward": record.reward,
        "rewards": record.rewards,
        "correct": record.correct,
        "parseable": record.parseable,
        "answer_pred": record.answer_pred,
        "finish_reason": record.finish_reason,
    }


def pair_row(chosen: RolloutRecord, rejected: RolloutRecord) -> dict[str, Any]:
    """One MMPR row; the question gets `<image>` placeholders if it has none."""
    row: dict[str, Any] = {}
    if chosen.images:
        row["image"] = chosen.images[0] if len(chosen.images) == 1 else list(chosen.images)
    row["question"] = with_image_placeholders(chosen.question, len(chosen.images))
    row.update(chosen=chosen.text, rejected=rejected.text, answer_gt=chosen.answer)
    if chosen.meta.get("system_prompt") is not None:
        row["system_prompt"] = chosen.meta["system_prompt"]
    row.update(chosen_meta=_meta(chosen), rejected_meta=_meta(rejected))
    return row


def _candidates(pos: list[RolloutRecord], neg: list[RolloutRecord], summary: PairBuildSummary) -> list[tuple]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pos:
        for q in neg:
            if _entailed(p, q):
                summary.skipped_substring += 1
            elif (p.text, q.text) in seen:
                summary.duplicates += 1
            else:
                seen.add((p.text, q.text))
                out.append((p, q))
    return out


def _key_rng(seed: int, key: Key) -> random.Random:
    digest = hashlib.sha1(
        json.dumps([seed, list(key[0]), key[1], key[2]], ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    return random.Random(digest)


def build_pairs(
    records: Iterable[RolloutRecord], *, max_pairs_per_prompt: int = 15, seed: int = 0
) -> tuple[list[dict[str, Any]], PairBuildSummary]:
    """Preference pairs in MMPR row form, and a summary of what was kept and dropped (module docstring: rules)."""
    if max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt}")
    summary = PairBuildSummary()
    groups: dict[Key, list[RolloutRecord]] = {}
    for record in records:
        summary.n_records += 1
        summary.n_positive += int(record.correct)
        summary.n_negative += int(not record.correct)
        summary.n_unparseable += int(not record.parseable)
        groups.setdefault(_key(record), []).append(record)
    summary.n_keys = len(groups)
    pairs: list[dict[str, Any]] = []
    for key, group in groups.items():
        group.sort(key=lambda r: r.key)  # order-independent: a resumed store reads back in another order
        pos = [r for r in group if r.correct]
        neg = [r for r in group if not r.correct]
        if not neg:
            summary.all_correct_keys += 1
            continue
        if not pos:
            summary.all_wrong_keys += 1
            continue
        candidates = _candidates(pos, neg, summary)
        if not candidates:
            summary.keys_without_pairs += 1
        elif len(candidates) > max_pairs_per_prompt:
            summary.capped += len(candidates) - max_pairs_per_prompt
            candidates = _key_rng(seed, key).sample(candidates, max_pairs_per_prompt)
        pairs.extend(pair_row(p, q) for p, q in candidates)
    summary.n_pairs = len(pairs)
    return pairs, summary


def write_pairs(path: str | os.PathLike, pairs: Iterable[dict[str, Any]]) -> Path:
    """Write MMPR jsonl atomically (temp file + rename): readers see the old file or the whole new one."""
    return atomic_write_jsonl(path, pairs)
