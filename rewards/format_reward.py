"""Format rewards: ``format`` (InternVL's ``Answer: \\boxed{...}`` last line) and ``think_format``."""

from __future__ import annotations

import re

from .contract import in_process
from .parsing import extract_final_answer, matching_braces

__all__ = ["format_reward", "think_format_reward"]

_ANSWER_BOXED_LINE = re.compile(r"[*_]*Answer[*_]*[ \t]*:[ \t*_]*\$?[ \t]*\\boxed[ \t]*\{")


def _follows_answer_format(completion: str) -> bool:
    lines = completion.rstrip().splitlines()
    last = lines[-1].strip() if lines else ""
    match = _ANSWER_BOXED_LINE.match(last)
    if not match:
        return False
    open_at = match.end() - 1
    close_at = matching_braces(last).get(open_at)
    # A non-empty box that closes, followed by decoration only: "Answer: \boxed{5}", "**Answer:** $\boxed{5}$."
    if close_at is None or not last[open_at + 1 : close_at].strip():
        return False
    return not last[close_at + 1 :].strip(" $*_.")


@in_process
def format_reward(completions: list[str], **_: object) -> list[float | None]:
    r"""1.0 if the last non-empty line is ``Answer: \boxed{...}`` (InternVL's ``en_v2`` prompt format), else 0.0.

    >>> format_reward(["Some work.\nAnswer: \\boxed{12}", "Answer: 12"])
    [1.0, 0.0]
    """
    return [1.0 if _follows_answer_format(c) else 0.0 for c in completions]


def _follows_think_format(completion: str) -> bool:
    text = completion.strip()
    if not text.startswith("<think>") or text.count("<think>") != 1 or text.count("</think>") != 1:
        return False
    thought, answer = text[len("<think>") :].split("</think>")
    return bool(thought.strip()) and extract_final_answer(answer) is not None


@in_process
def think_format_reward(completions: list[str], **_: object) -> list[float | None]:
    r"""1.0 for ``<think>reasoning</think>`` followed by a final answer (a ``\boxed{}`` or an ``Answer:`` line).

    Exactly one non-empty think block, at the start; the answer must come after it.

    >>> think_format_reward(["<think>2+2</think> \\boxed{4}", "<think>2+2</think>", "\\boxed{4}"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if _follows_think_format(c) else 0.0 for c in completions]
