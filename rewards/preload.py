"""Imported once by the reward forkserver: load and warm math-verify so every forked worker starts ready.

The first math-verify call builds its regexes and the LaTeX parser (about a second); done here, each worker and
each replacement of a killed worker inherits the warm state for free.
"""

from .math_reward import math_reward

math_reward([r"so \boxed{\frac{1}{2}}", r"Answer: (1, 2]", r"\boxed{x^2+1}"], answer=["0.5", "(1, 2]", "x^2 + 1"])
