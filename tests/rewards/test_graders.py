"""InternVL's short-answer graders and the geo3k reward, each on a hand-made table; then used as a recipe would."""

import pytest

from cascade_rl.config import from_dict
from cascade_rl.rewards import get_reward
from cascade_rl.rewards.graders import anls_similarity, levenshtein, relaxed_match, vqa_accuracy, vqa_normalize
from cascade_rl.rewards.scoring import CorrectRule, grade, reward_columns, reward_runner
from cascade_rl.rollout import Rollout
from cascade_rl.stages.eval import EvalConfig


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("105", "100", True),  # |105 - 100| / 100 = 0.05: the edge is inside
        ("105.1", "100", False),  # 0.051
        ("95", "100", True),
        ("-0.97", "-1", True),  # relative to |gold|
        ("12%", "12.5", True),  # the % sign is dropped, not divided: 12 vs 12.5 is 4 %
        ("0", "0", True),  # a zero gold has no relative error: equality
        ("0.001", "0", False),
        ("2021", "2020", False),  # a year is matched exactly, though within 5 %
        ("Yes", "yes", True),  # text: case-insensitive equality
        ("1,000", "1000", False),  # not a plain number: compared as text
    ],
)
def test_relaxed_match_table(prediction, gold, expected):
    assert relaxed_match(prediction, gold) is expected


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Two", "2"),
        ("the Red Car.", "red car"),  # articles and the final period go
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),
        ("yes!", "yes"),  # "!" touches no space: replaced by a space, then split away
        ("left - right", "left right"),  # "-" next to a space: dropped
        ("t-shirt", "t shirt"),  # inside a word: a space
        ("cant", "can't"),
        ("the dog's", "dog 's"),
        ("None", "0"),  # the VQA evaluation's own number word
    ],
)
def test_vqa_normalisation_table(text, normalised):
    assert vqa_normalize(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("2", ["two"], 1.0),  # one gold counts as ten agreeing annotators
        ("3", ["two"], 0.0),
        ("", ["two"], 0.0),
        # 10 annotators, k of them agree with the prediction. Leave-one-out: for each of the k, k - 1 others agree;
        # for each of the 10 - k, k others: score = (k·min(1, (k-1)/3) + (10-k)·min(1, k/3)) / 10.
        ("red", ["red"] * 1 + ["blue"] * 9, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        ("red", ["red"] * 2 + ["blue"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        ("red", ["red"] * 3 + ["blue"] * 7, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        ("red", ["red"] * 4 + ["blue"] * 6, 1.0),
    ],
)
def test_vqa_accuracy_table(prediction, golds, expected):
    assert vqa_accuracy(prediction, golds) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_levenshtein_table(a, b, distance):
    assert levenshtein(a, b) == levenshtein(b, a) == distance


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("ACME corp", "Acme  Corp", 1.0),  # case and spacing are normalised away
        ("acme corp.", "acme corp", 1 - 1 / 10),  # one edit over the longer length 10
        ("acme", "acne", 1 - 1 / 4),
        ("abcd", "wxyz", 0.0),  # NL = 1
        ("ab", "ax", 0.0),  # NL = 0.5 is not below τ = 0.5: 0, not 0.5 (and never the inverted dist/len)
        ("abc", "abx", 1 - 1 / 3),  # NL = 1/3 < 0.5
        ("a long paragraph that is no answer", "acme", 0.0),  # more than twice as long: 0 without the distance
    ],
)
def test_anls_table(prediction, gold, expected):
    assert anls_similarity(prediction, gold) == pytest.approx(expected)


def test_graders_read_the_final_answer_else_the_whole_completion():
    completions = [r"The bar is about \boxed{51}.", "Answer: 49", "49.0", "about fifty", "It is 50"]
    # boxed 51 and Answer-line 49 are within 5 % of 50; the bare "49.0" is the whole completion; the last two are text
    assert get_reward("relaxed_accuracy")(completions, answer=["50"] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_choice_grades_letter_golds_only():
    completions = [r"\boxed{(B)}", "Answer: B. 12 cm", "Answer: option B", r"\boxed{C}", "Answer: B", "Answer: B"]
    answers = ["B", "(B)", "B.", "B", "12 cm", None]
    # the last two golds are no option letter: another rule grades those rows
    assert get_reward("choice")(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, None, None]


def test_data_sources_pick_the_rows_a_grader_applies_to():
    relaxed = get_reward("relaxed_accuracy")
    sources = ["chartqa_train", "ChartQA-aug", "docvqa", None]
    values = relaxed(["Answer: 104"] * 4, answer=["100"] * 4, data_source=sources, data_sources=["chartqa"])
    assert values == [1.0, 1.0, None, None]  # substring, case-insensitive; rows without a data_source are left out
    with pytest.raises(ValueError, match="data_sources must be a list of strings"):
        relaxed(["x"], answer=["1"], data_sources="chartqa")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"<think>3 + 4 = 7</think> The answer is \boxed{7}.", 1.0),  # right, formatted: 0.9 + 0.1
        (r"The answer is \boxed{7}.", 0.9),  # right, no think block
        (r"<think>3 + 4 = 8</think> \boxed{8}", 0.1),  # wrong, formatted
        (r"<think>3 + 4</think> The answer is 7.", 0.0),  # no box: no answer and no format
        (r"<think>x</think> \boxed{7} then \boxed{8", 0.1),  # the last box is broken: no answer (an earlier box is
        # not read), but the regex still finds "\boxed{" then "}"
        (r"Before <think>x</think> \boxed{7}", 0.9),  # the think block must open the completion
        ("<think>\nmulti\nline\n</think>\n\\boxed{\\frac{14}{2}}", 1.0),  # newlines match; 14/2 = 7
    ],
)
def test_geo3k_table(completion, expected):
    assert get_reward("geo3k")([completion], answer=["7"]) == [pytest.approx(expected)]
    assert get_reward("geo3k")([completion], answer=[None]) == [None]


def test_graders_from_a_recipe_grade_each_row_by_its_own_rule():
    """rewards/correct as in a recipe's YAML: charts by relaxed accuracy, documents by ANLS (above 0.9, InternVL's
    bar), multiple choice by letter, the rest by math; scored in the runner's processes."""
    config = from_dict(
        EvalConfig,
        {
            "model_path": "m",
            "prompts": "p.jsonl",
            "rewards": [
                {"name": "relaxed_accuracy", "kwargs": {"data_sources": ["chartqa"]}},
                {"name": "anls", "kwargs": {"data_sources": ["docvqa"]}},
                {"name": "choice"},
                {"name": "math"},
            ],
            "correct": [
                {"reward": "relaxed_accuracy", "threshold": 0.9, "above": True},
                {"reward": "anls", "threshold": 0.9, "above": True},
                {"reward": "choice", "threshold": 0.9, "above": True},
                {"reward": "math", "threshold": 1.0},
            ],
        },
    )
    rows = [  # (completion, answer, data_source, graded by, correct)
        ("Answer: 103", "100", "chartqa", "relaxed_accuracy", True),
        ("Answer: Acme Corps", "ACME corp", "docvqa", "anls", False),  # ANLS 1 - 1/10 = 0.9: not above 0.9
        ("Answer: Acme Corp", "ACME corp", "docvqa", "anls", True),
        ("Answer: (C)", "C", "mmmu", "choice", True),
        (r"\boxed{0.5}", r"\frac{1}{2}", "mavis", "math", True),
    ]
    rollouts = [
        Rollout(f"p{i}", 0, c, [1], [0.0], "stop", {"answer": a, "data_source": s})
        for i, (c, a, s, *_) in enumerate(rows)
    ]
    with reward_runner(config.rewards, num_workers=1, timeout_s=60) as runner:
        result = runner.score([r.text for r in rollouts], **reward_columns(rollouts))
    graded = [grade({k: v[i] for k, v in result.per_reward.items()}, config.correct) for i in range(len(rows))]
    assert graded == [(by, correct) for *_, by, correct in rows]
    assert config.correct[1] == CorrectRule("anls", 0.9, above=True)
