"""build_pairs: preference pairs from scored rollouts, with InternVL's MMPR correctness rules (SPEC §2).

Rules (from InternVL's `mmpr_data_pipeline_correctness_postprocess.py`), per key (images, question, answer):
- each rollout is a positive (correct), a negative (incorrect) or a format negative; which, and the answer the
  overlap rule compares, depend on `answer_rule`:
  - "internvl" (InternVL's `en_v2` rule, `utils/accuracy_reward.py`): a response of 20 characters or fewer is a
    format negative, whatever it says; otherwise its answer is the last balanced `\boxed{}` (its content), else
    the whole response, and it is a positive or a negative by its grade;
  - "strict": a correct rollout is a positive, an incorrect one a negative when an answer could be parsed off it
    (last `\boxed{}`, else an `Answer:` line: `RolloutRecord.answer_pred`), a format negative when none could;
- correctness pairs are the Cartesian product positives x negatives, format pairs positives x format negatives;
- a pair is skipped when the chosen answer is a case-insensitive substring of the rejected one
  (`pos.answer.lower() in neg.answer.lower()`). Under "strict" a rollout without a parsed answer is compared by
  its full text; under "internvl" a format negative has no answer and is never skipped (InternVL compares it as
  the placeholder string 'None', so a chosen answer such as "no" or "one" drops it: a quirk not kept);
- identical (chosen, rejected) texts within a key are kept once;
- at most `max_pairs_per_prompt` correctness pairs and, separately, `max_format_pairs_per_prompt` format pairs
  (InternVL: 15 each, or 3 for files over 500K lines) are kept by seeded sampling;
- keys with only correct, or only wrong, rollouts give no pairs and are counted.
The two kinds go to two files, as InternVL writes `*_pairs_vqa_correctness_rules.jsonl` and
`*_pairs_vqa_format_rules.jsonl`; MPO trains on both.
Departures: InternVL deduplicates after sampling (so a key can end with fewer than 15 pairs); we deduplicate
before. Sampling uses random.Random seeded by (seed, key, kind), so a key's pairs do not depend on record order
or on the other keys.

Output rows are MMPR jsonl rows: {"image": str | [str] (absent without images), "question": str (with
`<image>` placeholders), "chosen": str, "rejected": str, "answer_gt": any, "chosen_meta": {...},
"rejected_meta": {...}}, plus "system_prompt" when the prompt row had its own (MPO then trains under it); a meta's
`answer_pred` and `parseable` are the rule's answer and format verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cascade_rl.data.io import atomic_write_jsonl
from cascade_rl.data.rows import with_image_placeholders
from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.rewards.parsing import internvl_answer, internvl_format_ok

Key = tuple[tuple[str, ...], str, str]  # (images, question, json(answer))
AnswerRule = Literal["internvl", "strict"]
ANSWER_RULES = ("internvl", "strict")


@dataclass
class PairBuildSummary:
    """Counts from one build_pairs call (records, keys, pairs of both kinds, and every reason a candidate was
    dropped; skipped_substring and duplicates count both kinds)."""

    n_records: int = 0
    n_positive: int = 0
    n_negative: int = 0
    n_format_negative: int = 0
    n_keys: int = 0
    all_correct_keys: int = 0
    all_wrong_keys: int = 0
    keys_without_pairs: int = 0  # had both kinds, but every candidate was skipped
    skipped_substring: int = 0
    duplicates: int = 0
    capped: int = 0  # correctness candidates dropped by max_pairs_per_prompt
    format_capped: int = 0  # format candidates dropped by max_format_pairs_per_prompt
    n_pairs: int = 0
    n_format_pairs: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


class BuiltPairs(NamedTuple):
    """What build_pairs returns: correctness pairs, format pairs (MMPR rows), and the counts."""

    pairs: list[dict[str, Any]]
    format_pairs: list[dict[str, Any]]
    summary: PairBuildSummary


@dataclass(frozen=True)
class Judged:
    """A record as the pair rules see it: "positive", "negative" or "format", and the answer the overlap rule
    compares (None: none to compare)."""

    record: RolloutRecord
    kind: str
    answer: str | None


def judge(record: RolloutRecord, answer_rule: AnswerRule) -> Judged:
    """Classify one record under `answer_rule` (module docstring)."""
    if answer_rule == "internvl":
        if not internvl_format_ok(record.text):
            return Judged(record, "format", None)
        return Judged(record, "positive" if record.correct else "negative", internvl_answer(record.text))
    if record.correct:
        return Judged(record, "positive", record.answer_pred)
    return Judged(record, "negative" if record.parseable else "format", record.answer_pred)


def _key(record: RolloutRecord) -> Key:
    return (tuple(record.images), record.question, json.dumps(record.answer, sort_keys=True, ensure_ascii=False))


def _entailed(chosen: Judged, rejected: Judged, answer_rule: AnswerRule) -> bool:
    """True when the chosen answer is a case-insensitive substring of the rejected one (the pair is ambiguous)."""
    if chosen.answer is not None and rejected.answer is not None:
        return chosen.answer.lower() in rejected.answer.lower()
    return answer_rule == "strict" and chosen.record.text.lower() in rejected.record.text.lower()


def _meta(judged: Judged) -> dict[str, Any]:
    record = judged.record
    return {
        "prompt_id": record.prompt_id,
        "sample_index": record.sample_index,
        "reward": record.reward,
        "rewards": record.rewards,
        "correct": record.correct,
        "parseable": judged.kind != "format",
        "answer_pred": judged.answer,
        "finish_reason": record.finish_reason,
    }


def pair_row(chosen: Judged, rejected: Judged) -> dict[str, Any]:
    """One MMPR row; the question gets `<image>` placeholders if it has none."""
    first = chosen.record
    row: dict[str, Any] = {}
    if first.images:
        row["image"] = first.images[0] if len(first.images) == 1 else list(first.images)
    row["question"] = with_image_placeholders(first.question, len(first.images))
    row.update(chosen=first.text, rejected=rejected.record.text, answer_gt=first.answer)
    if first.meta.get("system_prompt") is not None:
        row["system_prompt"] = first.meta["system_prompt"]
    row.update(chosen_meta=_meta(chosen), rejected_meta=_meta(rejected))
    return row


def _candidates(
    pos: list[Judged], neg: list[Judged], answer_rule: AnswerRule, summary: PairBuildSummary
) -> list[tuple[Judged, Judged]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pos:
        for q in neg:
            texts = (p.record.text, q.record.text)
            if _entailed(p, q, answer_rule):
                summary.skipped_substring += 1
            elif texts in seen:
                summary.duplicates += 1
            else:
                seen.add(texts)
                out.append((p, q))
    return out


def _key_rng(seed: int, key: Key, kind: str) -> random.Random:
    """The sampler of one key's pairs of one kind (correctness pairs keep the seeding they had alone)."""
    fields = [seed, list(key[0]), key[1], key[2]] + ([kind] if kind == "format" else [])
    digest = hashlib.sha1(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()
    return random.Random(digest)


def _capped(candidates: list, cap: int, rng: random.Random) -> tuple[list, int]:
    """(at most `cap` candidates sampled by `rng`, how many were dropped)."""
    if len(candidates) <= cap:
        return candidates, 0
    return rng.sample(candidates, cap), len(candidates) - cap


def build_pairs(
    records: Iterable[RolloutRecord],
    *,
    answer_rule: AnswerRule = "internvl",
    max_pairs_per_prompt: int = 15,
    max_format_pairs_per_prompt: int = 15,
    seed: int = 0,
) -> BuiltPairs:
    """Correctness and format preference pairs in MMPR row form, and a summary (module docstring: rules)."""
    if answer_rule not in ANSWER_RULES:
        raise ValueError(f"answer_rule must be one of {', '.join(ANSWER_RULES)}, got {answer_rule!r}")
    if min(max_pairs_per_prompt, max_format_pairs_per_prompt) < 1:
        raise ValueError(
            f"max_pairs_per_prompt and max_format_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt} and "
            f"{max_format_pairs_per_prompt}"
        )
    summary = PairBuildSummary()
    groups: dict[Key, list[Judged]] = {}
    for record in records:
        judged = judge(record, answer_rule)
        summary.n_records += 1
        summary.n_positive += judged.kind == "positive"
        summary.n_negative += judged.kind == "negative"
        summary.n_format_negative += judged.kind == "format"
        groups.setdefault(_key(record), []).append(judged)
    summary.n_keys = len(groups)
    pairs: list[dict[str, Any]] = []
    format_pairs: list[dict[str, Any]] = []
    for key, group in groups.items():
        group.sort(key=lambda j: j.record.key)  # order-independent: a resumed store reads back in another order
        pos, neg, fmt = ([j for j in group if j.kind == kind] for kind in ("positive", "negative", "format"))
        if not neg and not fmt:
            summary.all_correct_keys += 1
            continue
        if not pos:
            summary.all_wrong_keys += 1
            continue
        kept, dropped = _capped(
            _candidates(pos, neg, answer_rule, summary), max_pairs_per_prompt, _key_rng(seed, key, "correctness")
        )
        kept_format, dropped_format = _capped(
            _candidates(pos, fmt, answer_rule, summary), max_format_pairs_per_prompt, _key_rng(seed, key, "format")
        )
        summary.capped += dropped
        summary.format_capped += dropped_format
        summary.keys_without_pairs += not kept and not kept_format
        pairs.extend(pair_row(p, q) for p, q in kept)
        format_pairs.extend(pair_row(p, q) for p, q in kept_format)
    summary.n_pairs, summary.n_format_pairs = len(pairs), len(format_pairs)
    return BuiltPairs(pairs, format_pairs, summary)


def format_pairs_path(out: str | os.PathLike) -> Path:
    """Where the format pairs go beside the correctness pairs `out`: `pairs.jsonl` → `pairs_format_rules.jsonl`."""
    out = Path(out)
    return out.with_name(f"{out.stem}_format_rules{out.suffix or '.jsonl'}")


def write_pairs(path: str | os.PathLike, pairs: Iterable[dict[str, Any]]) -> Path:
    """Write MMPR jsonl atomically (temp file + rename): readers see the old file or the whole new one."""
    return atomic_write_jsonl(path, pairs)
