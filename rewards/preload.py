"""Imported once by the reward forkserver: load math-verify and warm it, so every forked worker starts warm.

The first parses build math-verify's regexes and fill the LaTeX parser's (ANTLR) prediction caches, which are
process-wide. Doing it here, once, on the usual shapes of final answers costs about a second at the forkserver's
start; every worker and every replacement of a killed worker then inherits the warm caches instead of paying
for them again (about 15% of the CPU time of a first batch of MATH-style answers).
"""

from .math_reward import math_reward

ANSWER_SHAPES = [
    "12",
    "-3",
    "1.25",
    "1,000",
    r"\frac{1}{2}",
    r"-\frac{7}{3}",
    r"2\frac{1}{3}",
    r"3\sqrt{2}",
    r"\frac{\sqrt{3}}{2}",
    r"\frac{\pi}{4}",
    r"2\pi",
    r"45^\circ",
    r"5\%",
    r"10^{3}",
    r"e^{2}",
    r"\ln 2",
    r"\sin 30^\circ",
    "(0, 1]",
    r"[-1, \infty)",
    r"(-\infty, 0) \cup (1, \infty)",
    "(3, 4)",
    r"\{1, 2\}",
    "1, 2, 3",
    "x^2 - 1",
    "(x-1)(x+1)",
    "x = 2",
    "y > 3",
    "a + b",
    r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
    r"\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}",
]

math_reward(
    [f"so \\boxed{{{shape}}}" for shape in ANSWER_SHAPES[1:] + ANSWER_SHAPES[:1]],
    answer=ANSWER_SHAPES,
)
