"""The ``math`` reward: the completion's final answer checked against the gold answer.

Steps, for each completion:

1. The gold (column ``answer``) is reduced to its final answer the same way (a ``\\boxed{}`` or a GSM8K ``####``
   line inside it is honoured).
2. The prediction is the last balanced ``\\boxed{...}``, else the last ``Answer:`` line (``parsing.py``).
3. The gold decides how to compare:
   - a choice letter (``B``, ``(B)``): the prediction's leading letter (``(B)``, ``B. 5``, ``\\textbf{(D) }5``);
   - words (``Yes``, ``Paris``, ``no solution``): case- and space-insensitive string equality;
   - anything else: math-verify, gold first, on the LaTeX parse of both; it handles fractions, decimals, mixed
     numbers, percentages, degrees, units, intervals, sets, tuples and matrices.
4. 1.0 if they agree, 0.0 if not (or if the completion has no final answer), None if the gold cannot be parsed.

Only math-verify's LaTeX parser (latex2sympy2's ANTLR grammar) ever sees model text; math-verify's plain-expression
path, which runs ``sympy.parse_expr`` (an ``eval``), is never enabled here. Symbolic comparison can still be slow
(``9^{9^{9^9}}``), and math-verify's own SIGALRM timeout is disabled because it breaks off the main thread, so this
reward must run under ``RewardRunner``'s hard, out-of-process timeout.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

import math_verify.grader
import math_verify.parser
from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

from .parsing import choice_letter, extract_boxed, extract_final_answer, strip_text_wrappers

__all__ = ["math_reward", "score_answer", "score_prediction", "MAX_ANSWER_CHARS"]

# A final answer longer than this (and twice the gold) is not an answer; it scores 0 without reaching sympy.
MAX_ANSWER_CHARS = 1000

# Timeouts are enforced from outside the process, so math-verify's "timeout is disabled" warning is noise.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

_LATEX_ONLY = [
    LatexExtractionConfig(
        boxed_match_priority=0,
        try_extract_without_anchor=False,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    )
]

_CHOICE_GOLD = re.compile(r"\(?([A-J])\)?\.?")
_WORDS = re.compile(r"[A-Za-z][A-Za-z '\-]*[A-Za-z]")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_PLAIN_FRACTION = re.compile(r"(-?)(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|\\[dt]?frac(\d)(\d)|(\d+)/(\d+))")
_DEGREES = re.compile(r"\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°)$")
_MICRO = Fraction(1, 10**6)
# "18 dollars", "$1,200 per month": a number followed by words only.
_NUMBER_THEN_WORDS = re.compile(r"(\\?\$?\s*-?[\d,]*\.?\d+)\s+[A-Za-z][A-Za-z .]*")
_SPACING = re.compile(r"\\[,;:! ]|\\left|\\right|\s+")


def _gold_answer(gold: object) -> str | None:
    if gold is None:
        return None
    text = str(gold).strip()
    if "\\boxed" in text or "\\fbox" in text:
        text = extract_boxed(text) or ""
    elif "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip().strip("$").strip()
    return text or None


def _normalise_words(text: str) -> str:
    text = strip_text_wrappers(text).strip().strip("$").strip().rstrip(".").lower()
    text = " ".join(text.split())
    for article in ("the ", "a ", "an "):
        if text.startswith(article):
            return text[len(article) :]
    return text


def _compact(latex: str) -> str:
    """A spacing-free spelling used only for the exact-match fast path."""
    return _SPACING.sub("", latex).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


@lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple:
    """math-verify's LaTeX parse of one bare answer (cached: a group of rollouts repeats its gold and answers)."""
    boxed = "\\boxed{" + answer + "}"
    return tuple(parse(boxed, extraction_config=_LATEX_ONLY, fallback_mode="no_fallback", parsing_timeout=None))


def score_answer(completion: str, gold: object) -> float | None:
    """1.0 if the completion's final answer equals ``gold``, 0.0 if not, None if the gold cannot be parsed.

    >>> score_answer("so the answer is \\\\boxed{\\\\frac{1}{2}}", "0.5")
    1.0
    >>> score_answer("Answer: (C)", "B")
    0.0
    """
    return score_prediction(extract_final_answer(completion), gold)


def score_prediction(prediction: str | None, gold: object) -> float | None:
    """1.0 if the bare answer ``prediction`` (None: no answer) equals ``gold``, 0.0 if not, None if the gold cannot
    be parsed; ``score_answer`` once the final answer is read off a completion.

    >>> score_prediction("\\\\frac{6}{12}", "0.5"), score_prediction(None, "0.5")
    (1.0, 0.0)
    """
    gold_answer = _gold_answer(gold)
    if gold_answer is None:
        return None
    letter = _CHOICE_GOLD.fullmatch(strip_text_wrappers(gold_answer).strip())
    if letter:
        return float(prediction is not None and choice_letter(prediction) == letter.group(1))
    if _WORDS.fullmatch(strip_text_wrappers(gold_answer).strip().rstrip(".")):
        return float(prediction is not None and _normalise_words(prediction) == _normalise_words(gold_answer))

    gold_number = _literal(gold_answer)
    if gold_number is None and not _parse(gold_answer):
        return None
    if prediction is None or len(prediction) > max(MAX_ANSWER_CHARS, 2 * len(gold_answer)):
        return 0.0
    if _compact(prediction) == _compact(gold_answer):
        return 1.0
    words = _NUMBER_THEN_WORDS.fullmatch(prediction)
    if words:
        prediction = words.group(1)
    if gold_number is not None:
        predicted_number = _literal(prediction)
        # math-verify compares two numbers exactly, or rounded to 6 decimals when one is a decimal: equal numbers
        # agree either way and numbers further apart than 1e-6 never do; only the sliver between needs sympy.
        if predicted_number == gold_number:
            return 1.0
        if predicted_number is not None and abs(predicted_number - gold_number) > _MICRO:
            return 0.0
    return _verify(gold_answer, prediction)


@lru_cache(maxsize=8192)
def _verify(gold_answer: str, prediction: str) -> float:
    """math-verify on two bare answers, gold first (cached: rollouts of one prompt repeat their answers)."""
    prediction_parsed = _parse(prediction)
    if not prediction_parsed:
        return 0.0
    return float(verify(list(_parse(gold_answer)), list(prediction_parsed), timeout_seconds=None))


def _literal(answer: str) -> Fraction | None:
    """The exact value of a plain number (``-1,234.5``, ``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``), else None.

    A degree sign is dropped first, as math-verify's unit normalisation does (``30^\\circ`` is 30).
    """
    answer = _DEGREES.sub("", answer).strip()
    match = _PLAIN_NUMBER.fullmatch(answer)
    if match:
        return Fraction(answer.replace(",", ""))
    match = _PLAIN_FRACTION.fullmatch(answer.replace(" ", ""))
    if not match:
        return None
    numerator, denominator = (int(g) for g in match.groups()[1:] if g is not None)
    if denominator == 0:
        return None
    return Fraction(-numerator if match.group(1) else numerator, denominator)


def math_reward(completions: list[str], answer: list[object], **_: object) -> list[float | None]:
    """Math accuracy reward (column ``answer``): 1.0 right, 0.0 wrong, None when the gold is unparseable.

    >>> math_reward(["... \\\\boxed{72}", "Answer: 70"], answer=["72", "72"])
    [1.0, 0.0]
    """
    return [score_answer(completion, gold) for completion, gold in zip(completions, answer, strict=True)]
