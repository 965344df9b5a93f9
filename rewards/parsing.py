"""Pulling final answers, boxes and points out of model text.

Every function here runs in linear time on any input (no nested quantifiers, no backtracking-prone regexes),
so the cheap rewards built on them can run inside the trainer process without a timeout.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "matching_braces",
    "extract_boxed",
    "extract_answer_line",
    "extract_final_answer",
    "extract_last_boxed",
    "internvl_answer",
    "internvl_format_ok",
    "choice_letter",
    "strip_text_wrappers",
    "parse_boxes",
    "parse_points",
]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces (\{ \}) are content, not structure
# "Answer: ...", "**Final answer:** ...", "> answer： ..." — the whole line after the colon.
_ANSWER_LINE = re.compile(r"^[ \t>*_#]*(?:final[ \t]+)?answer[ \t*_]*[:：](.*)$", re.IGNORECASE | re.MULTILINE)
_GSM8K_LINE = re.compile(r"^[ \t]*####(.*)$", re.MULTILINE)
_INLINE_MATH = re.compile(r"\$([^$]+)\$")
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def matching_braces(text: str) -> dict[int, int]:
    """Map the index of every ``{`` to the index of its matching ``}`` (unmatched ones are absent)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.end() - m.start() == 2:  # \{ or \}
            continue
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` whose braces balance, or None.

    >>> extract_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed{3} and a broken \boxed{4")
    '3'
    """
    starts = [m.end() - 1 for m in _BOXED.finditer(text)]
    if not starts:
        return None
    pairs = matching_braces(text)
    for open_at in reversed(starts):
        close_at = pairs.get(open_at)
        if close_at is not None:
            return text[open_at + 1 : close_at].strip()
    return None


def _clean_answer(answer: str) -> str:
    """Strip the decoration around a one-line answer: bold marks, a final period, $...$ or \\(...\\).

    When the line is prose with inline math ("the total is $5$"), the last inline-math span is the answer.
    """
    answer = answer.strip().strip("*_").strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(answer) >= len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            return answer[len(left) : len(answer) - len(right)].strip()
    spans = _INLINE_MATH.findall(answer)
    return spans[-1].strip() if spans else answer


def extract_answer_line(text: str) -> str | None:
    """Text after the colon of the last ``Answer:`` line (or the last GSM8K ``####`` line), or None.

    >>> extract_answer_line("Work...\\nAnswer: $42$.")
    '42'
    >>> extract_answer_line("Natalia sold 48 + 24 = 72 clips.\\n#### 72")
    '72'
    """
    last = None
    for regex in (_ANSWER_LINE, _GSM8K_LINE):
        for m in regex.finditer(text):
            if last is None or m.start() > last.start():
                last = m
    if last is None:
        return None
    answer = _clean_answer(last.group(1))
    return answer or None


def extract_final_answer(text: str) -> str | None:
    r"""The final answer of a completion: the last balanced ``\boxed{}``, else the last ``Answer:`` line.

    >>> extract_final_answer("Reasoning.\nAnswer: \\boxed{7}")
    '7'
    >>> extract_final_answer("no answer here") is None
    True
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    return extract_answer_line(text)


def extract_last_boxed(text: str) -> str | None:
    r"""Content of the *last* ``\boxed{`` as written (not stripped) when its braces balance, else None: an earlier
    balanced box does not stand in for a broken last one (InternVL's and verl's reading; ``extract_boxed`` is more
    lenient). Escaped braces (``\{``) are content.

    >>> extract_last_boxed(r"so \boxed{\frac{1}{2}}"), extract_last_boxed(r"\boxed{1}, then \boxed{2")
    ('\\frac{1}{2}', None)
    """
    open_at = text.rfind("\\boxed{")
    if open_at < 0:
        return None
    open_at += len("\\boxed")
    close_at = matching_braces(text).get(open_at)
    return None if close_at is None else text[open_at + 1 : close_at]


def internvl_answer(text: str) -> str:
    r"""InternVL's ``en_v2`` answer (``utils/accuracy_reward.py::extract_answer_from_box``): the last balanced
    ``\boxed{}`` (``extract_last_boxed``), else the whole response. InternVL counts escaped braces as structure.

    >>> internvl_answer(r"so \boxed{\frac{1}{2}}"), internvl_answer("no box here")
    ('\\frac{1}{2}', 'no box here')
    """
    boxed = extract_last_boxed(text)
    return text if boxed is None else boxed


def internvl_format_ok(text: str) -> bool:
    r"""InternVL's ``en_v2`` format check (``check_cot_format``): a response of 20 characters or fewer is a format
    failure, whatever it says.

    >>> internvl_format_ok(r"Answer: \boxed{5}"), internvl_format_ok(r"The count is 5, so: \boxed{5}")
    (False, True)
    """
    return len(text) > 20


_CHOICE_PARENS = re.compile(r"(?:(?i:option|choice)\s*)?\(([A-Ja-j])\)")
_CHOICE_BARE = re.compile(r"(?:(?i:option|choice)\s+)?([A-J])(?=$|[\s.:,)\]])")


def choice_letter(answer: str) -> str | None:
    r"""The option letter an answer starts with: ``(B)``, ``B``, ``B. 5``, ``option C``, ``\textbf{(D) }5``.

    >>> choice_letter("B. 5"), choice_letter(r"\textbf{(d) }5"), choice_letter("Berlin")
    ('B', 'D', None)
    """
    text = strip_text_wrappers(answer).strip().strip("$*").strip()
    match = _CHOICE_PARENS.match(text) or _CHOICE_BARE.match(text)
    if match:
        return match.group(1).upper()
    return text.upper() if len(text) == 1 and text in "abcdefghij" else None


def strip_text_wrappers(text: str) -> str:
    r"""Replace ``\text{x}``, ``\textbf{x}``, ``\mathrm{x}`` ... (innermost first) by ``x``.

    >>> strip_text_wrappers(r"\textbf{(D) }5")
    '(D) 5'
    """
    for _ in range(8):  # wrappers nest a few levels at most in real answers; 8 passes bound the work
        stripped = _WRAPPER.sub(r"\1", text)
        if stripped == text:
            break
        text = stripped
    return text


_NUM = r"(-?\d+(?:\.\d+)?)"
_BOX_RE = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]")
_PAIR_BRACKET = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*\]")
_PAIR_PAREN = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")


def _tagged(text: str, tag: str) -> list[str]:
    """Contents of every closed ``<tag>...</tag>``; a split, not a lazy regex, so unclosed tags cost O(n)."""
    close = f"</{tag}>"
    return [piece.split(close, 1)[0] for piece in text.split(f"<{tag}>")[1:] if close in piece]


def _finite(values: tuple[str, ...]) -> list[float] | None:
    numbers = [float(v) for v in values]
    return numbers if all(math.isfinite(v) for v in numbers) else None


def parse_boxes(text: str) -> list[list[float]]:
    """Every ``[x1, y1, x2, y2]`` inside ``<box>...</box>`` tags, or anywhere in the text when there is no tag.

    Boxes are returned as written (validation against the 0-1000 frame is the caller's job); a quadruple with a
    non-finite number is skipped.

    >>> parse_boxes("<ref>cat</ref><box>[[10, 20, 30, 40], [50, 60, 70, 80]]</box>")
    [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]]
    >>> parse_boxes("the box is [1, 2, 3, 4].")
    [[1.0, 2.0, 3.0, 4.0]]
    """
    tagged = _tagged(text, "box")
    sources = tagged if tagged else [text]
    boxes = []
    for source in sources:
        for m in _BOX_RE.finditer(source):
            box = _finite(m.groups())
            if box is not None:
                boxes.append(box)
    return boxes


def parse_points(text: str) -> list[list[float]]:
    """Every ``[x, y]`` inside ``<point>...</point>`` tags; without tags, every ``(x, y)`` in the text.

    >>> parse_points("<point>[[500, 300]]</point>")
    [[500.0, 300.0]]
    >>> parse_points("click at (12, 34)")
    [[12.0, 34.0]]
    """
    tagged = _tagged(text, "point")
    if tagged:
        found = [m.groups() for source in tagged for m in _PAIR_BRACKET.finditer(source)]
    else:
        found = [m.groups() for m in _PAIR_PAREN.finditer(text)]
    return [p for p in (_finite(g) for g in found) if p is not None]
