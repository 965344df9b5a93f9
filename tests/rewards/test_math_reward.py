"""The ``math`` reward, case by case, in the answer styles of MATH, GSM8K, MathVista and MMMU.

Every expected value is the mathematically right verdict, decided by hand: right answers spelled differently must
score 1.0, wrong answers that look like the right one must score 0.0. Comments explain the non-obvious ones.
"""

import pytest

from cascade_rl.rewards import get_reward
from cascade_rl.rewards.math_reward import MAX_ANSWER_CHARS, math_reward, score_answer


def boxed(answer: str) -> str:
    return f"Let me work through it step by step.\nSo the final answer is $\\boxed{{{answer}}}$."


# (completion, gold, expected)
MATH_STYLE = [
    # fractions and decimals
    (boxed(r"\frac{1}{2}"), r"\frac{1}{2}", 1.0),
    (boxed("0.5"), r"\frac{1}{2}", 1.0),
    (boxed(r"\frac{2}{4}"), r"\frac12", 1.0),
    (boxed(r"\dfrac{3}{4}"), "0.75", 1.0),
    (boxed("3/4"), r"\frac{3}{4}", 1.0),
    (boxed(r"\frac{4}{3}"), r"\frac{3}{4}", 0.0),  # reciprocal
    (boxed(r"\frac{1}{3}"), r"\frac{1}{2}", 0.0),
    (boxed("2"), r"\frac{1}{2}", 0.0),
    (boxed("0.7"), "0.75", 0.0),
    (boxed("0.333333"), r"\frac{1}{3}", 1.0),  # math-verify rounds decimals to 6 places: 1/3 -> 0.333333
    (boxed("0.333"), r"\frac{1}{3}", 0.0),  # ... so a 3-digit truncation is wrong
    (boxed(r"-\frac{3}{4}"), "-0.75", 1.0),
    (boxed(r"\frac{3}{4}"), "-0.75", 0.0),  # sign dropped
    (boxed(r"\frac{-3}{4}"), r"-\frac{3}{4}", 1.0),
    # mixed numbers
    (boxed(r"2\frac{1}{2}"), r"\frac{5}{2}", 1.0),
    (boxed(r"2 \frac{1}{2}"), "2.5", 1.0),
    (boxed(r"2\frac{1}{3}"), r"\frac{5}{2}", 0.0),
    (boxed(r"-2\frac{1}{2}"), "-2.5", 1.0),
    # radicals, pi
    (boxed(r"2\sqrt{3}"), r"\sqrt{12}", 1.0),
    (boxed(r"3\sqrt{2}"), r"2\sqrt{3}", 0.0),
    (boxed(r"\frac{\sqrt{2}}{2}"), r"\frac{1}{\sqrt{2}}", 1.0),  # rationalised denominator
    (boxed(r"\frac{\sqrt{3}}{2}"), r"\frac{\sqrt{2}}{2}", 0.0),
    (boxed(r"\frac{\pi}{3}"), r"\frac{\pi}{3}", 1.0),
    (boxed(r"\frac{1}{3}\pi"), r"\frac{\pi}{3}", 1.0),
    (boxed(r"\frac{\pi}{6}"), r"\frac{\pi}{3}", 0.0),
    (boxed("3.14"), r"\pi", 0.0),  # an approximation is not the exact answer
    (boxed(r"4\pi"), r"4\pi", 1.0),
    (boxed(r"8\pi"), r"4\pi", 0.0),
    # powers and big numbers
    (boxed("2^{10}"), "1024", 1.0),
    (boxed("2^{11}"), "1024", 0.0),
    (boxed(r"1.5 \times 10^{3}"), "1500", 1.0),
    (boxed("1,000,000"), "1000000", 1.0),
    (boxed("100000"), "1000000", 0.0),
    (boxed(r"\infty"), r"\infty", 1.0),
    (boxed(r"-\infty"), r"\infty", 0.0),
    # percentages and degrees
    (boxed(r"25\%"), r"25\%", 1.0),
    (boxed("25"), r"25\%", 1.0),  # the percent sign may be left out
    (boxed("0.25"), r"25\%", 1.0),  # 25% is 0.25
    (boxed(r"30\%"), r"25\%", 0.0),
    (boxed(r"30^\circ"), "30", 1.0),
    (boxed("30"), r"30^\circ", 1.0),
    (boxed(r"30^{\circ}"), r"30^\circ", 1.0),
    (boxed(r"150^\circ"), r"30^\circ", 0.0),  # the supplement
    (boxed(r"60^\circ"), r"\frac{\pi}{3}", 0.0),  # degrees are not converted to radians
    # units
    (boxed(r"5\text{ cm}"), "5", 1.0),
    (boxed(r"5 \mathrm{cm}^2"), "5", 1.0),
    (boxed(r"6\text{ cm}"), "5", 0.0),
    # intervals
    (boxed("(1, 2]"), "(1,2]", 1.0),
    (boxed("[1, 2]"), "(1, 2]", 0.0),  # closed vs half-open
    (boxed(r"(-\infty, 3)"), r"(-\infty,3)", 1.0),
    (boxed(r"(-\infty, 3]"), r"(-\infty, 3)", 0.0),
    (boxed(r"(2, \infty)"), r"(2,\infty)", 1.0),
    (boxed(r"[2, \infty)"), r"(2,\infty)", 0.0),
    (boxed(r"(-\infty, 1) \cup (2, \infty)"), r"(-\infty,1)\cup(2,\infty)", 1.0),
    (boxed(r"(-\infty, 1] \cup (2, \infty)"), r"(-\infty,1)\cup(2,\infty)", 0.0),
    # sets and lists of solutions (order does not matter)
    (boxed(r"\{1, 2, 3\}"), r"\{3, 2, 1\}", 1.0),
    (boxed(r"\{1, 2\}"), r"\{1, 2, 3\}", 0.0),
    (boxed("-2, 3"), "3, -2", 1.0),
    (boxed("2, -3"), "3, -2", 0.0),
    # tuples (order matters)
    (boxed("(1, -2)"), "(1,-2)", 1.0),
    (boxed(r"\left(1, -2\right)"), "(1, -2)", 1.0),
    (boxed("(-2, 1)"), "(1, -2)", 0.0),
    (boxed("(4, 3)"), "(3, 4)", 0.0),
    # matrices and vectors
    (boxed(r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}"), r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", 1.0),
    (boxed(r"\begin{pmatrix} -2 \\ 1 \end{pmatrix}"), r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", 0.0),
    (boxed(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", 1.0),
    (
        boxed(r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}"),
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        0.0,
    ),  # transpose
    # expressions and equations
    (boxed("(x+1)^2"), "x^2+2x+1", 1.0),
    (boxed("(x-1)^2"), "x^2+2x+1", 0.0),
    (boxed("x^2-1"), "(x-1)(x+1)", 1.0),
    (boxed(r"\frac{a+b}{2}"), r"\frac{b+a}{2}", 1.0),
    (boxed("x = 5"), "5", 1.0),  # "x = 5" answers "5"
    (boxed("y = 2x + 3"), "y=2x+3", 1.0),
    (boxed("y = 2x - 3"), "y=2x+3", 0.0),
    (boxed("x > 2"), "x>2", 1.0),
    (boxed(r"x \geq 2"), "x>2", 0.0),
    (boxed("3 + 4i"), "3+4i", 1.0),
    (boxed("3 - 4i"), "3+4i", 0.0),  # the conjugate
    # which box counts
    (r"First guess \boxed{3}, but that is wrong; the answer is \boxed{4}.", "4", 1.0),
    (r"The answer is \boxed{4}. Wait, I made an error: \boxed{3}.", "4", 0.0),  # the last box counts
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", 1.0),  # nested braces
    (r"so \boxed{5} and then \boxed{6", "5", 1.0),  # the last box never closes: the previous one counts
    (r"\fbox{12}", "12", 1.0),
    ("I could not solve this problem.", "5", 0.0),  # no final answer
    (r"\boxed{}", "5", 0.0),  # an empty box answers nothing
]

GSM8K_STYLE = [
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72", "72", 1.0),
    ("She sold 48 + 22 = 70 clips.\n#### 70", "72", 0.0),
    ("Weng earns 12/60 = $0.2 per minute.\nAnswer: 10", "10", 1.0),
    ("Answer: $72$", "72", 1.0),
    ("Answer: 72.", "72", 1.0),  # a sentence-ending period
    ("Answer: 27", "72", 0.0),  # digits swapped
    ("Answer: 1,080", "1080", 1.0),
    ("Answer: 1,800", "1080", 0.0),
    ("Answer: \\$18", "18", 1.0),
    ("Answer: 18 dollars", "18", 1.0),
    ("Answer: 18 dollars", "81", 0.0),
    ("Answer: 3 hours", "3", 1.0),
    ("Answer: 1,200 per month", "1200", 1.0),
    ("Answer: 18.5", "18.5", 1.0),
    ("Answer: 18.50", "18.5", 1.0),
    ("Answer: 185", "18.5", 0.0),
    ("Answer: -3", "3", 0.0),
    ("Answer: 0.5", "1/2", 1.0),
    ("**Answer:** 42", "42", 1.0),
    ("Final Answer: 12", "12", 1.0),
    ("answer: 12", "12", 1.0),
    ("Answer: 12\nHope this helps!", "12", 1.0),  # text after the answer line
    ("Answer: 10\nHmm, let me recheck.\nAnswer: 12", "12", 1.0),  # the last Answer line counts
    ("Answer: 10\nHmm, let me recheck.\nAnswer: 12", "10", 0.0),
    ("Answer: The total is $15$.", "15", 1.0),  # inline math inside prose
    ("The answer is 72.", "72", 0.0),  # neither a box nor an Answer: line: no final answer
    ("She has 5 + 3 = 8 apples.\nAnswer: 8", "She has 5 + 3 = 8 apples.\n#### 8", 1.0),  # GSM8K gold solution
    ("She has 5 apples.\nAnswer: 5", "She has 5 + 3 = 8 apples.\n#### 8", 0.0),
    (boxed("72"), 72, 1.0),  # an integer gold column
    (boxed(r"\$72"), "72", 1.0),
    (boxed("7.2"), "72", 0.0),
    (boxed("007"), "7", 1.0),
]

MATHVISTA_STYLE = [
    # multiple choice
    ("The angle is 40 degrees, option B.\nAnswer: B", "B", 1.0),
    ("Answer: (B)", "B", 1.0),
    ("Answer: (C)", "B", 0.0),
    (boxed("B"), "B", 1.0),
    (boxed("(B)"), "B", 1.0),
    (boxed("A"), "B", 0.0),
    ("Answer: B. 5 cm", "B", 1.0),
    ("Answer: C. 5 cm", "B", 0.0),
    ("Answer: D: 12", "D", 1.0),
    ("Answer: Option C", "C", 1.0),
    ("Answer: option (c)", "C", 1.0),
    ("Answer: b", "B", 1.0),
    ("Answer: (d)", "D", 1.0),
    (boxed(r"\textbf{(D) }5"), "D", 1.0),
    (boxed(r"\textbf{(D) }5"), "C", 0.0),
    (boxed(r"\text{(B)}"), "B", 1.0),
    (boxed("D"), "(D)", 1.0),
    ("Answer: E", "D", 0.0),
    ("Answer: A", "A", 1.0),
    ("Answer: Dog", "D", 0.0),  # a word that starts with the letter is not the option
    ("Answer: 5", "D", 0.0),  # the option's value without its letter
    # free-form numbers with a required precision
    ("Answer: 1.5", "1.5", 1.0),
    ("Answer: 1.50", "1.5", 1.0),
    ("Answer: 15", "1.5", 0.0),
    ("Answer: 1/4", "0.25", 1.0),
    ("Answer: 6.0", "6", 1.0),
    ("Answer: 6.1", "6", 0.0),
    (boxed("0.27"), "0.72", 0.0),
    (boxed("62"), "62", 1.0),
    (boxed("26"), "62", 0.0),
    # words
    ("Answer: yes", "Yes", 1.0),
    ("Answer: No", "Yes", 0.0),
    ("Answer: Red.", "red", 1.0),
    ("Answer: blue", "red", 0.0),
    (boxed(r"\text{increasing}"), "increasing", 1.0),
    (boxed(r"\text{decreasing}"), "increasing", 0.0),
]

MMMU_STYLE = [
    ("The correct option is G because ...\nAnswer: (G)", "G", 1.0),
    ("Answer: (H)", "G", 0.0),
    (boxed("I"), "I", 1.0),
    ("Answer: (A)", "(A)", 1.0),
    ("Answer: A", "(B)", 0.0),
    (boxed(r"4.5\text{ m}"), "4.5", 1.0),
    (boxed(r"5.4\text{ m}"), "4.5", 0.0),
    ("Answer: paris", "Paris", 1.0),
    ("Answer: Lyon", "Paris", 0.0),
    ("Answer: sirap", "Paris", 0.0),  # as symbols these letters would multiply to the same product
    (boxed(r"\text{No solution}"), "no solution", 1.0),
    (boxed("0"), "no solution", 0.0),
    ("Answer: the mitochondria", "Mitochondria", 1.0),
    ("Answer: ribosome", "Mitochondria", 0.0),
    (boxed(r"\frac{1}{6}"), r"\frac{1}{6}", 1.0),
    (boxed(r"\frac{1}{8}"), r"\frac{1}{6}", 0.0),
    (boxed("0.1667"), r"\frac{1}{6}", 0.0),  # 4 decimals are not 1/6 at math-verify's 6-place rounding
    (boxed("12%"), "0.12", 1.0),
    (boxed("120"), "1.2", 0.0),
]

UNPARSEABLE_GOLD = [
    ("Answer: 5", "", None),
    ("Answer: 5", None, None),
    ("Answer: 5", r"\boxed{}", None),
    ("Answer: 5", "@@@", None),
    ("Answer: 5", r"\frac{", None),
]

ALL_CASES = MATH_STYLE + GSM8K_STYLE + MATHVISTA_STYLE + MMMU_STYLE + UNPARSEABLE_GOLD


def test_case_count():
    assert len(ALL_CASES) >= 120
    assert sum(1 for *_, expected in ALL_CASES if expected == 1.0) >= 60
    assert sum(1 for *_, expected in ALL_CASES if expected == 0.0) >= 60


@pytest.mark.parametrize(("completion", "gold", "expected"), ALL_CASES)
def test_math_cases(completion, gold, expected):
    assert score_answer(completion, gold) == expected


def test_batch_contract_and_registry():
    completions = [boxed("72"), "Answer: 70", "no answer", "Answer: 5"]
    golds = ["72", "72", "72", ""]
    assert math_reward(completions, answer=golds) == [1.0, 0.0, 0.0, None]
    assert get_reward("math")(completions, answer=golds, prompt=["p"] * 4) == [1.0, 0.0, 0.0, None]


def test_too_long_answer_scores_zero_without_parsing():
    # A right value padded to an absurd length is not an answer; the guard answers at once.
    long_answer = "+".join(["0"] * (MAX_ANSWER_CHARS // 2 + 1)) + "+5"
    assert score_answer(boxed(long_answer), "5") == 0.0
    assert score_answer(boxed("0+0+5"), "5") == 1.0  # the same sum, short, is fine
