"""The ``geo3k`` reward: 0.9 · accuracy + 0.1 · format, the scorer of verl's geo3k example.

InternVL3.5's released online recipe (verl-internvl) scores with verl's default dispatch, and NeMo-RL reproduces its
MMPR-Tiny run with the geo3k scorer, so this is the most likely reward of the released GSPO stage (an inference:
SPEC §3, docs/recipes.md). Per completion:

- format = 1 when the completion is ``<think>…</think>…\\boxed{…}…`` as a whole (verl's regex
  ``<think>.*</think>.*\\\\boxed\\{.*\\}.*``, dot matching newlines), else 0;
- accuracy = 1 when the content of the *last* ``\\boxed{`` (braces balanced) equals the gold (column ``answer``),
  else 0 (no box, or a broken last box, is 0);
- reward = (1 − format_weight) · accuracy + format_weight · format, format_weight = 0.1.

Departure: verl compares answers with mathruler's ``grade_answer``; here the comparison is the ``math`` reward's
(choice letters, words, then math-verify), so the same gold gives the same accuracy in both rewards. A gold the
``math`` reward cannot parse gives None.
"""

from __future__ import annotations

from .math_reward import score_prediction
from .parsing import extract_last_boxed

__all__ = ["geo3k_reward", "follows_think_boxed"]


def follows_think_boxed(completion: str) -> bool:
    r"""verl's geo3k format, as a linear scan: ``<think>`` first, a later ``</think>``, then ``\boxed{``, then ``}``.

    Equivalent to ``re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", completion, re.DOTALL)`` (each ``.*`` may
    be empty, so the earliest of each marker is the best choice) without its backtracking.

    >>> follows_think_boxed(r"<think>2+2</think> so \boxed{4}."), follows_think_boxed(r"\boxed{4}")
    (True, False)
    """
    if not completion.startswith("<think>"):
        return False
    end_think = completion.find("</think>", len("<think>"))
    box = completion.find("\\boxed{", end_think + len("</think>")) if end_think >= 0 else -1
    return box >= 0 and completion.find("}", box + len("\\boxed{")) >= 0


def geo3k_reward(
    completions: list[str], answer: list[object], *, format_weight: float = 0.1, **_: object
) -> list[float | None]:
    r"""(1 − format_weight) · accuracy of the last ``\boxed{}`` + format_weight · think-then-box format.

    >>> geo3k_reward([r"<think>3+4</think> \boxed{7}", r"\boxed{7}", r"<think>.</think> \boxed{8}", "7"], ["7"] * 4)
    [1.0, 0.9, 0.1, 0.0]
    """
    out: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        boxed = extract_last_boxed(completion)
        accuracy = score_prediction(boxed.strip() if boxed is not None else None, gold)
        if accuracy is None:
            out.append(None)
            continue
        form = float(follows_think_boxed(completion))
        out.append((1.0 - format_weight) * accuracy + format_weight * form)
    return out
