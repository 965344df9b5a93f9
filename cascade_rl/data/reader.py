"""Read prompt files (jsonl, json list, parquet) into PromptRows, checking every row and naming bad ones.

Accepted columns per row:
  id (optional; else a hash of images and question), question (required, non-empty),
  image: str | list[str]  or  images: list[str | {"path": str}]   (optional; paths relative to image_root),
  answer (required when require_answer=True), system_prompt (optional), anything else -> PromptRow.extra.
The verl / MMPR-Tiny layout is understood too: `extra_info.question`, `reward_model.ground_truth`,
`images: [{"path": ...}]`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cascade_rl.data.errors import DataError
from cascade_rl.data.images import image_sizes
from cascade_rl.data.io import iter_jsonl_lines, parse_json_line
from cascade_rl.data.rows import IMAGE_PLACEHOLDER, PromptRow, prompt_id_for

OnError = Literal["raise", "skip"]
_CONSUMED = ("id", "question", "image", "images", "answer", "system_prompt")
_MAX_EXAMPLES = 5


@dataclass
class ReadSummary:
    """What a read did: rows seen, rows kept, rows skipped by reason, and the first few skip messages."""

    path: str
    n_rows: int = 0
    n_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def note_skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(str(error))

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.path}: {self.n_kept}/{self.n_rows} rows kept; skipped: {reasons}"


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield (source, raw record) for every row: "file line N" (jsonl), "file item N" (json), "file row N" (parquet).

    A jsonl line that is not JSON is yielded as a DataError instead of a record, so callers can skip it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for lineno, line in iter_jsonl_lines(path):
            try:
                yield f"{path} line {lineno}", parse_json_line(path, lineno, line)
            except DataError as e:
                yield f"{path} line {lineno}", e
    elif suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                items = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); fix the file",
                reason="bad_file",
            ) from e
        if not isinstance(items, list):
            raise DataError(
                f"{path}: expected a JSON list of row objects, got {type(items).__name__}; "
                "use a list or a .jsonl file",
                reason="bad_file",
            )
        for k, item in enumerate(items, start=1):
            yield f"{path} item {k}", item
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        k = 0
        for batch in pq.ParquetFile(path).iter_batches():
            for item in batch.to_pylist():
                k += 1
                yield f"{path} row {k}", item
    else:
        raise DataError(
            f"{path}: unknown prompt file type '{suffix}'; use .jsonl, .json or .parquet", reason="bad_file"
        )


def _images_of(record: dict[str, Any], source: str) -> list[str]:
    value = record.get("images", record.get("image"))
    if value is None or value == "":
        return []
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list):
        raise DataError(
            f"{source}: 'image(s)' must be a path or a list of paths, got {type(value).__name__}; fix the column",
            reason="bad_image_column",
        )
    paths = []
    for item in items:
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str) or not path:
            raise DataError(
                f"{source}: image entry {item!r:.80} has no file path (embedded image bytes are not "
                "supported); write the images to files and list their paths",
                reason="bad_image_column",
            )
        paths.append(path)
    return paths


def _question_of(record: dict[str, Any]) -> Any:
    if "question" in record:
        return record["question"]
    extra_info = record.get("extra_info")
    return extra_info.get("question") if isinstance(extra_info, dict) else None


def _answer_of(record: dict[str, Any]) -> Any:
    if "answer" in record:
        return record["answer"]
    reward_model = record.get("reward_model")
    return reward_model.get("ground_truth") if isinstance(reward_model, dict) else None


def row_from_record(record: Any, source: str, *, require_answer: bool = False) -> PromptRow:
    """Validate one raw record and build its PromptRow (images are not opened here); DataError names `source`."""
    if not isinstance(record, dict):
        raise DataError(
            f"{source}: expected a JSON object, got {type(record).__name__}; fix the row", reason="bad_row"
        )
    question = _question_of(record)
    if not isinstance(question, str):
        raise DataError(
            f"{source}: no 'question' text (got {question!r:.40}); add a 'question' string column",
            reason="missing_question",
        )
    if not question.strip():
        raise DataError(f"{source}: empty question; write the question or drop the row", reason="empty_question")
    images = _images_of(record, source)
    n_placeholders = question.count(IMAGE_PLACEHOLDER)
    if n_placeholders not in (0, len(images)):
        raise DataError(
            f"{source}: question has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders but the row has "
            f"{len(images)} images; use one placeholder per image, or none",
            reason="placeholder_mismatch",
        )
    answer = _answer_of(record)
    if require_answer and (answer is None or answer == ""):
        raise DataError(
            f"{source}: no 'answer' (ground truth), which this stage grades against; add it or drop the row",
            reason="missing_answer",
        )
    row_id = record.get("id")
    return PromptRow(
        id=str(row_id) if row_id is not None else prompt_id_for(images, question),
        question=question,
        images=images,
        answer=answer,
        extra={k: v for k, v in record.items() if k not in _CONSUMED},
        system_prompt=record.get("system_prompt"),
        source=source,
    )


def read_prompts(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    on_error: OnError = "raise",
    require_answer: bool = False,
    check_images: bool = True,
) -> tuple[list[PromptRow], ReadSummary]:
    """Read and check every row of a prompt file; returns (rows, summary).

    Checks: valid JSON, a non-empty question, placeholders matching images, an answer if `require_answer`,
    unique ids, and (if `check_images`) that each image exists under `image_root` and has a readable header.
    on_error="raise": the first bad row raises DataError naming file:line, the problem and the fix.
    on_error="skip": bad rows are dropped and counted by reason in the summary.
    A file that gives no rows (empty, or every row skipped) raises DataError naming it: no stage runs on nothing.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    summary = ReadSummary(path=str(path))
    rows: list[PromptRow] = []
    first_seen: dict[str, str] = {}
    for source, record in iter_raw_records(path):
        summary.n_rows += 1
        try:
            row = _checked_row(record, source, image_root, require_answer, check_images, first_seen)
        except DataError as e:
            if on_error == "raise":
                raise DataError(f"{e}, or set on_error=skip", reason=e.reason) from e
            summary.note_skip(e)
            continue
        first_seen[row.id] = source
        rows.append(row)
    summary.n_kept = len(rows)
    if not rows:
        raise DataError(_nothing_to_run_on(summary), reason="no_rows")
    return rows, summary


def _nothing_to_run_on(summary: ReadSummary) -> str:
    """Why a prompt file gave no rows: empty, or every row skipped (by reason, with the first skip's message)."""
    if not summary.n_rows:
        return (
            f"{summary.path}: no prompt rows in the file; a stage refuses to run on nothing: fill it or fix the path"
        )
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(summary.skipped.items()))
    first = f"; first: {summary.examples[0]}" if summary.examples else ""
    return (
        f"{summary.path}: all {summary.n_rows} rows were skipped by on_error=skip ({reasons}){first}; "
        "a stage refuses to run on nothing: fix the rows"
    )


def _checked_row(
    record: Any,
    source: str,
    image_root: str | os.PathLike | None,
    require_answer: bool,
    check_images: bool,
    first_seen: dict[str, str],
) -> PromptRow:
    if isinstance(record, DataError):
        raise record
    row = row_from_record(record, source, require_answer=require_answer)
    if row.id in first_seen:
        raise DataError(
            f"{source}: duplicate prompt id '{row.id}' (first at {first_seen[row.id]}); give rows unique "
            "ids, or drop the repeated row",
            reason="duplicate_id",
        )
    if check_images:
        image_sizes(row, image_root)  # reads the headers: a missing or unreadable image raises, naming `source`
    return row
