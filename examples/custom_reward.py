"""A custom reward plugged into a recipe.

A reward is any function `fn(completions: list[str], **columns) -> list[float | None]` (None: does not apply).
Name it in YAML as "module:function"; it runs in the RewardRunner's worker processes with a hard timeout.

Run: python examples/custom_reward.py   (scores two completions, then validates a recipe that uses it)
"""

from __future__ import annotations

import re


def brevity(completions: list[str], answer: list[str | None] | None = None, **_) -> list[float | None]:
    """1.0 for a short final answer line ("Answer: \\boxed{…}" within 40 characters), 0.0 otherwise; None when
    the row has no ground truth (the reward does not apply)."""
    answer = answer or [None] * len(completions)
    scores = []
    for text, gold in zip(completions, answer):
        if gold is None:
            scores.append(None)
            continue
        lines = text.strip().splitlines() or [""]
        scores.append(1.0 if re.search(r"\\boxed\{", lines[-1]) and len(lines[-1]) <= 40 else 0.0)
    return scores


RECIPE_SECTION = """
gspo:
  rewards: [{name: math, weight: 0.9}, {name: "examples.custom_reward:brevity", weight: 0.1}]
  correct: [{reward: math, threshold: 1.0}]
"""


def main() -> None:
    import sys
    from pathlib import Path

    from cascade_rl.rewards import RewardRunner

    # "examples.custom_reward" must be importable, in this process and in the reward workers: in a real project it
    # is a module of your installed package; here the repository root goes on the path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    completions = ["Two plus two. Answer: \\boxed{4}", "It is four, as anyone can see.\nAnswer: \\boxed{5}"]
    with RewardRunner(["math", "examples.custom_reward:brevity"], weights=[0.9, 0.1]) as runner:
        result = runner.score(completions, answer=["4", "4"])
    print("per reward:", result.per_reward)
    print("total:", result.total)
    print("recipe section using it:", RECIPE_SECTION)


if __name__ == "__main__":
    main()
