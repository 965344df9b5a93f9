"""The click reward (GUI grounding) and the two format rewards."""

import pytest

from cascade_rl.rewards import get_reward
from cascade_rl.rewards.click import click, predicted_point
from cascade_rl.rewards.format_reward import format_reward, think_format_reward

GOLD = [100, 100, 200, 200]

CLICK_CASES = [
    ("<point>[[150, 150]]</point>", GOLD, 1.0),
    ("<point>[150, 150]</point>", GOLD, 1.0),
    ("<point>[[250, 150]]</point>", GOLD, 0.0),
    ("click at (100, 100)", GOLD, 1.0),  # the edge is inside
    ("click at (200, 200)", GOLD, 1.0),
    ("click at (99.9, 150)", GOLD, 0.0),
    ("<box>[[100, 100, 300, 300]]</box>", [150, 150, 250, 250], 1.0),  # the box's centre (200, 200)
    ("<box>[[0, 0, 100, 100]]</box>", [150, 150, 250, 250], 0.0),  # centre (50, 50)
    ("[100, 100, 300, 300]", [150, 150, 250, 250], 1.0),  # a bare box
    ("(550, 550)", [[0, 0, 10, 10], [500, 500, 600, 600]], 1.0),  # inside the second gold box
    ("(300, 300)", [[0, 0, 10, 10], [500, 500, 600, 600]], 0.0),
    ("first (10, 10), no: (150, 150)", GOLD, 1.0),  # the last point counts
    ("first (150, 150), no: (10, 10)", GOLD, 0.0),
    ("<point>[[150, 150]]</point> not (5, 5)", GOLD, 1.0),  # the tag wins
    ("(1500, 150)", GOLD, 0.0),  # outside the frame: dropped
    ("(150, 150, 3)", GOLD, 0.0),
    ("click the OK button", GOLD, 0.0),
    ("<point>[[abc, 150]]</point>", GOLD, 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), CLICK_CASES)
def test_click(completion, gold, expected):
    assert click([completion], bbox=[gold]) == [expected]


@pytest.mark.parametrize("gold", [None, [], [200, 200, 100, 100], "nothing"])
def test_click_without_valid_gold_does_not_apply(gold):
    assert click(["(150, 150)"], bbox=[gold]) == [None]


def test_predicted_point():
    assert predicted_point("<box>[[100, 200, 300, 400]]</box>") == (200.0, 300.0)
    assert predicted_point("none") is None
    assert get_reward("click")(["(150, 150)"], bbox=[GOLD]) == [1.0]


FORMAT_CASES = [
    ("Reasoning.\nAnswer: \\boxed{12}", 1.0),
    ("Answer: \\boxed{12}", 1.0),
    ("Answer: \\boxed{12}\n\n", 1.0),  # trailing blank lines
    ("**Answer:** $\\boxed{12}$.", 1.0),
    ("Answer: \\boxed{\\frac{1}{2}}", 1.0),
    ("Answer: 12", 0.0),
    ("\\boxed{12}", 0.0),
    ("Answer: \\boxed{12}\nThanks!", 0.0),  # not the last line
    ("Answer: \\boxed{12", 0.0),  # never closes
    ("Answer: \\boxed{}", 0.0),  # empty
    ("Answer: \\boxed{12} because 3 * 4 = 12", 0.0),
    ("answer: \\boxed{12}", 0.0),  # InternVL's prompt asks for 'Answer:'
    ("", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_format(completion, expected):
    assert format_reward([completion]) == [expected]
    assert get_reward("format")([completion]) == [expected]


THINK_CASES = [
    ("<think>2+2=4</think> \\boxed{4}", 1.0),
    ("<think>\nreason\n</think>\nAnswer: 4", 1.0),
    ("  <think>a</think> \\boxed{4}", 1.0),
    ("<think>2+2</think>", 0.0),  # no answer after the thought
    ("\\boxed{4}", 0.0),  # no thought
    ("<think></think> \\boxed{4}", 0.0),  # an empty thought
    ("<think>a</think><think>b</think>\\boxed{4}", 0.0),
    ("Sure. <think>a</think> \\boxed{4}", 0.0),  # must start with the thought
    ("<think>a \\boxed{4}", 0.0),  # never closes
    ("<think>a \\boxed{3}</think> it is clear", 0.0),  # the answer is only inside the thought
]


@pytest.mark.parametrize(("completion", "expected"), THINK_CASES)
def test_think_format(completion, expected):
    assert think_format_reward([completion]) == [expected]
    assert get_reward("think_format")([completion]) == [expected]
