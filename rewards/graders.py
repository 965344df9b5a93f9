"""Short-answer graders of InternVL's MMPR pipeline: ``relaxed_accuracy``, ``vqa_score``, ``choice``, ``anls``.

InternVL grades a rollout by a mode picked per dataset (``utils/accuracy_reward.py::get_mode``): relaxed accuracy
for charts, ANLS for documents, the VQA score, the multiple-choice letter and math for the rest, and calls it
correct when the score is above 0.9. Here each mode is a reward; a recipe picks them per row with ``correct:``
rules (the first reward that applies grades the row) and, for mixed files, the ``data_sources`` option: the reward
applies only to rows whose ``data_source`` column contains one of the given strings (case-insensitive), e.g.
``{name: relaxed_accuracy, kwargs: {data_sources: [chartqa]}}``.

Each grader reads the prediction the same way: the final answer (last balanced ``\\boxed{}``, else the last
``Answer:`` line), else the whole completion (InternVL grades the whole response when it has no box). The gold is
the ``answer`` column: a string or number, or a list of accepted answers; a row without one gets None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .contract import in_process
from .parsing import choice_letter, extract_final_answer, strip_text_wrappers

__all__ = ["relaxed_accuracy", "vqa_score", "choice", "anls", "vqa_normalize", "levenshtein"]

Gold = object  # a string, a number, or a list of them


def _prediction(completion: str) -> str:
    answer = extract_final_answer(completion)
    return (answer if answer is not None else completion).strip()


def _golds(gold: Gold) -> list[str] | None:
    """The accepted answers as stripped strings; None when the row has none (the reward does not apply)."""
    if gold is None:
        return None
    values = gold if isinstance(gold, (list, tuple)) else [gold]
    golds = [str(value).strip() for value in values if value is not None]
    return [g for g in golds if g] or None


def _applies(data_source: object, data_sources: Sequence[str] | None) -> bool:
    if data_sources is None:
        return True
    source = str(data_source or "").lower()
    return any(str(name).lower() in source for name in data_sources)


def _grade(completions, answer, data_source, data_sources, score) -> list[float | None]:
    """``score(prediction, golds)`` per completion; None where the row has no gold or is not in ``data_sources``."""
    if isinstance(data_sources, str):
        raise ValueError(f"data_sources must be a list of strings, got the string {data_sources!r}")
    sources = data_source if data_source is not None else [None] * len(completions)
    out: list[float | None] = []
    for completion, gold, source in zip(completions, answer, sources, strict=True):
        golds = _golds(gold)
        applies = golds is not None and _applies(source, data_sources)
        out.append(float(score(_prediction(completion), golds)) if applies else None)
    return out


# ---- relaxed accuracy (ChartQA; Methani et al. 2020, as in pix2struct's metric) ----


def _relaxed_number(text: str) -> float | None:
    """A plain number, a trailing ``%`` dropped (``12%`` is 12, not 0.12), else None."""
    try:
        value = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def relaxed_match(prediction: str, gold: str, tolerance: float = 0.05) -> bool:
    """Within ``tolerance`` relative error of a non-zero numeric gold; otherwise case-insensitive equality. A gold
    that looks like a year (4 characters, starting ``20``) is matched exactly.

    >>> relaxed_match("104", "100"), relaxed_match("106", "100"), relaxed_match("2019", "2020")
    (True, False, False)
    """
    if len(gold) == 4 and gold.startswith("20"):
        return prediction.lower() == gold.lower()
    predicted, expected = _relaxed_number(prediction), _relaxed_number(gold)
    if predicted is not None and expected:
        return abs(predicted - expected) / abs(expected) <= tolerance
    return prediction.lower() == gold.lower()


@in_process
def relaxed_accuracy(
    completions: list[str],
    answer: list[Gold],
    data_source: list | None = None,
    *,
    tolerance: float = 0.05,
    data_sources: list[str] | None = None,
    **_: object,
) -> list[float | None]:
    r"""1.0 when the answer is within ±5 % (``tolerance``) of a numeric gold, or equals a textual one; else 0.0.

    >>> relaxed_accuracy([r"\boxed{51.5}", r"\boxed{53}", "Answer: Yes"], answer=["50", "50", "yes"])
    [1.0, 0.0, 1.0]
    """

    def score(prediction: str, golds: list[str]) -> bool:
        return any(relaxed_match(prediction, gold, tolerance) for gold in golds)

    return _grade(completions, answer, data_source, data_sources, score)


# ---- VQA score (Antol et al. 2015; the VQA / EvalAI evaluation's answer normalisation) ----

_PUNCTUATION = ';/[]"{}()=+\\_->@`!<'
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point)
_NUMBER_WORDS = dict(
    zip("none zero one two three four five six seven eight nine ten".split(), "0 0 1 2 3 4 5 6 7 8 9 10".split())
)
_ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe get it back, so "dont" and "don't" compare equal ("'s" is split off
# before, so none ends in it).
_CONTRACTIONS = {
    word.replace("'", ""): word
    for word in (
        "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd how'd how'll i'm i've "
        "isn't it'd it'll ma'am mightn't might've mustn't must've needn't o'clock shan't should've shouldn't there'd "
        "there're they'd they'll they're they've wasn't we've weren't what'll what're what've where'd where've who'd "
        "who'll who've why'll why're won't would've wouldn't y'all you'd you'll you're you've"
    ).split()
}


def vqa_normalize(text: str) -> str:
    """The VQA evaluation's answer normalisation (EvalAI's processor, which InternVL uses): lower case; commas and
    question marks dropped; "'s" split off; other punctuation dropped next to a space, else turned into one; a
    period not before a digit dropped; number words as digits; articles dropped; contractions restored.

    >>> vqa_normalize("Two dogs."), vqa_normalize("The  RED car!"), vqa_normalize("dont"), vqa_normalize("1,000")
    ('2 dogs', 'red car', "don't", '1000')
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = " ".join(text.split())
    out = text
    for mark in _PUNCTUATION:
        out = out.replace(mark, "" if f"{mark} " in text or f" {mark}" in text else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_accuracy(prediction: str, golds: list[str]) -> float:
    """min(1, #annotators who gave the answer / 3), averaged over the 10 leave-one-out subsets of the annotators.

    ``golds`` is the annotators' answers (VQA has 10); a single gold counts as ten annotators who agree (InternVL
    scores its one ground truth that way), so it scores 1 or 0. An empty normalised answer scores 0.

    >>> vqa_accuracy("two", ["2"]), vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7)
    (1.0, 0.9)
    """
    golds = golds * 10 if len(golds) == 1 else golds
    predicted = vqa_normalize(prediction)
    if not predicted:
        return 0.0
    matches = [vqa_normalize(gold) == predicted for gold in golds]
    total = sum(matches)
    return sum(min(1.0, (total - own) / 3) for own in matches) / len(golds)


@in_process
def vqa_score(
    completions: list[str],
    answer: list[Gold],
    data_source: list | None = None,
    *,
    data_sources: list[str] | None = None,
    **_: object,
) -> list[float | None]:
    r"""The VQA accuracy of the answer against the gold (a list: the annotators' answers), in [0, 1].

    >>> vqa_score(["Answer: Two", r"\boxed{a cat}", "Answer: 3"], answer=["2", "cat", "2"])
    [1.0, 1.0, 0.0]
    """
    return _grade(completions, answer, data_source, data_sources, vqa_accuracy)


# ---- multiple-choice letter ----

_GOLD_LETTER = re.compile(r"\(?([A-J])\)?\.?")


@in_process
def choice(
    completions: list[str],
    answer: list[Gold],
    data_source: list | None = None,
    *,
    data_sources: list[str] | None = None,
    **_: object,
) -> list[float | None]:
    r"""1.0 when the answer's option letter (``B``, ``(B)``, ``B. 5``, ``option B``) is the gold letter, else 0.0;
    None where the gold is not a single letter A-J (another rule grades those rows).

    >>> choice([r"\boxed{(B)}", "Answer: B. 12 cm", "Answer: C", "Answer: B"], answer=["B", "(B)", "B", "12"])
    [1.0, 1.0, 0.0, None]
    """
    letters = []
    for gold in answer:
        match = _GOLD_LETTER.fullmatch(strip_text_wrappers(str(gold)).strip()) if gold is not None else None
        letters.append(match.group(1) if match else None)

    def score(prediction: str, golds: list[str]) -> bool:
        return choice_letter(prediction) == golds[0]

    return _grade(completions, letters, data_source, data_sources, score)


# ---- ANLS (Biten et al. 2019, ST-VQA / DocVQA) ----


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), O(len(a)·len(b)) time, O(min) memory.

    >>> levenshtein("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls_similarity(prediction: str, gold: str, tau: float = 0.5) -> float:
    """1 − NL when the normalised Levenshtein distance NL = lev(p, g) / max(|p|, |g|) is below ``tau``, else 0;
    both strings lower-cased with whitespace collapsed.

    Since lev ≥ | |p| − |g| |, a string twice as long as the other has NL ≥ 0.5: it scores 0 without the O(|p|·|g|)
    distance, so a long completion against a short gold costs nothing.

    >>> anls_similarity("Acme Corp.", "ACME corp"), anls_similarity("invoice", "total")
    (0.9, 0.0)
    """
    p, g = " ".join(prediction.lower().split()), " ".join(gold.lower().split())
    longest = max(len(p), len(g))
    if longest == 0:
        return 1.0
    if (longest - min(len(p), len(g))) / longest >= tau:
        return 0.0
    distance = levenshtein(p, g) / longest
    return 1.0 - distance if distance < tau else 0.0


def anls(
    completions: list[str],
    answer: list[Gold],
    data_source: list | None = None,
    *,
    tau: float = 0.5,
    data_sources: list[str] | None = None,
    **_: object,
) -> list[float | None]:
    r"""Average Normalised Levenshtein Similarity of the answer to the closest gold (max over a list), in [0, 1].

    >>> anls([r"\boxed{Acme Corp.}", "Answer: Globex"], answer=[["ACME corp", "Acme Corporation"], "Initech"])
    [0.9, 0.0]
    """

    def score(prediction: str, golds: list[str]) -> float:
        return max(anls_similarity(prediction, gold, tau) for gold in golds)

    return _grade(completions, answer, data_source, data_sources, score)
