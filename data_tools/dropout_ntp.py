"""DropoutNTP: preference pairs for questions without ground truth (SPEC §2, InternVL's MPO paper).

chosen = a model response to the question with its image(s);
rejected = the first `start_ratio` of that response's words + the model's continuation of them *without*
the image. Following InternVL's `mmpr_data_pipeline_dropout_ntp.py`: words are split on single spaces
(newlines stay inside words, so the prefix keeps its layout), the prefix is `int(n_words * start_ratio)`
words re-joined and stripped, `<image>` placeholders are removed from the question (then stripped), and the
continuation is appended to the prefix as is (the model writes its own leading space). As InternVL does, a
continuation that rebuilds the chosen response exactly is kept (it is counted in `identical`).

`dropout_ntp_pairs` takes any `continue_fn(messages, prefix) -> str`: `messages` is the image-free chat
([system?], user), and the engine must continue `prefix` as the start of the assistant turn (prefill),
returning only the new text. Sampling settings live in the engine (InternVL: temperature 1.0 in the docs,
0.7 in code; top_k 50; 2048 new tokens). The `dropout-ntp` stage (stages/dropout_ntp.py) samples the chosen
responses and their continuations with a rollout engine in batches, and builds its rows with `dropout_pair_row`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cascade_rl.data.rows import IMAGE_PLACEHOLDER, with_image_placeholders
from cascade_rl.data_tools.records import RolloutRecord

ContinueFn = Callable[[list[dict[str, Any]], str], str]


@dataclass
class DropoutSummary:
    n_rows: int = 0
    n_pairs: int = 0
    empty_response: int = 0  # no chosen text: nothing to truncate
    identical: int = 0  # pairs whose continuation rebuilt the chosen response exactly (kept, as InternVL does)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def truncate_words(text: str, ratio: float) -> str:
    """The first int(n_words * ratio) space-separated words, re-joined with spaces and stripped.

    "a b c d e", 0.5 -> "a b" (int(5 * 0.5) = 2).
    """
    words = text.split(" ")
    return " ".join(words[: int(len(words) * ratio)]).strip()


def image_free_messages(question: str, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Chat messages for the question with its `<image>` placeholders removed and no image parts."""
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    text = question.replace(IMAGE_PLACEHOLDER, "").strip()
    messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return messages


def _fields(row: RolloutRecord | dict[str, Any]) -> tuple[str, list[str], str, Any]:
    """(question, images, response, answer) from a RolloutRecord or an MMPR-like dict."""
    if isinstance(row, RolloutRecord):
        return row.question, list(row.images), row.text, row.answer
    images = row.get("images", row.get("image")) or []
    images = [images] if isinstance(images, str) else list(images)
    response = row["response"] if "response" in row else row["chosen"]
    return row["question"], images, response, row.get("answer", row.get("answer_gt"))


def dropout_pair_row(
    question: str,
    images: list[str],
    chosen: str,
    rejected: str,
    *,
    answer: Any = None,
    chosen_meta: dict[str, Any] | None = None,
    rejected_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An MMPR pair row as the pairs stage writes it: {"image"? (absent without images), "question" (with `<image>`
    placeholders), "chosen", "rejected", "answer_gt", "chosen_meta", "rejected_meta"}; each meta gets
    "source": "dropout_ntp" first."""
    row: dict[str, Any] = {}
    if images:
        row["image"] = images[0] if len(images) == 1 else list(images)
    row.update(question=with_image_placeholders(question, len(images)), chosen=chosen, rejected=rejected)
    row["answer_gt"] = answer
    row["chosen_meta"] = {"source": "dropout_ntp", **(chosen_meta or {})}
    row["rejected_meta"] = {"source": "dropout_ntp", **(rejected_meta or {})}
    return row


def check_start_ratio(start_ratio: float) -> None:
    if not 0.0 < start_ratio < 1.0:
        raise ValueError(f"start_ratio must be in (0, 1), got {start_ratio}")


def dropout_ntp_pairs(
    rows_with_responses: Iterable[RolloutRecord | dict[str, Any]],
    continue_fn: ContinueFn,
    *,
    start_ratio: float = 0.5,
    system_prompt: str | None = None,
) -> tuple[list[dict[str, Any]], DropoutSummary]:
    """One MMPR pair row (`dropout_pair_row`) per input row with a non-empty response.

    Input rows are RolloutRecords or dicts with "question", optional "image"/"images", "response" (or
    "chosen") and optional "answer"/"answer_gt".
    """
    check_start_ratio(start_ratio)
    summary = DropoutSummary()
    pairs = []
    for row in rows_with_responses:
        summary.n_rows += 1
        question, images, response, answer = _fields(row)
        if not response.strip():
            summary.empty_response += 1
            continue
        prefix = truncate_words(response, start_ratio)
        rejected = prefix + continue_fn(image_free_messages(question, system_prompt), prefix)
        summary.identical += rejected == response
        meta = {"start_ratio": start_ratio, "prefix": prefix}
        pairs.append(dropout_pair_row(question, images, response, rejected, answer=answer, rejected_meta=meta))
    summary.n_pairs = len(pairs)
    return pairs, summary
