"""Answer, box and point extraction, including inputs built to make a careless parser slow."""

import doctest
import importlib
import time

import pytest

from cascade_rl.rewards.parsing import (
    extract_answer_line,
    extract_boxed,
    extract_final_answer,
    extract_last_boxed,
    internvl_answer,
    internvl_format_ok,
    matching_braces,
    parse_boxes,
    parse_points,
    strip_text_wrappers,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{5}", "5"),
        (r"\boxed {5}", "5"),
        (r"$\boxed{ 5 }$.", "5"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are content
        (r"\boxed{a} \boxed{b", "a"),  # the last box is unbalanced
        (r"\boxed{a}}}}", "a"),
        (r"\fbox{7}", "7"),
        ("no box", None),
        (r"\boxed{{{", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: 5", "5"),
        ("work\nAnswer: $5$.", "5"),
        ("**Answer:** 5", "5"),
        ("**Final answer**: 5", "5"),
        ("> ANSWER: 5", "5"),
        ("Answer：5", "5"),  # full-width colon
        ("Answer: \\(x+1\\)", "x+1"),
        ("Answer: the sum is $7$ apples", "7"),
        ("Answer: 1\nAnswer: 2", "2"),
        ("#### 72", "72"),
        ("Answer: 1\n#### 2", "2"),  # whichever comes last
        ("The answer is 5", None),
        ("Answer:", None),
        ("My answer: 5", None),  # "Answer" must start the line
    ],
)
def test_extract_answer_line(text, expected):
    assert extract_answer_line(text) == expected


def test_final_answer_prefers_box_over_answer_line():
    assert extract_final_answer("Answer: 3\nwhich is \\boxed{4}") == "4"
    assert extract_final_answer("\\boxed{4}\nAnswer: 3") == "4"
    assert extract_final_answer("Answer: 3") == "3"


def test_matching_braces_skips_escaped():
    text = r"{a\{b}c}"
    assert matching_braces(text) == {0: 5}


def test_strip_text_wrappers():
    assert strip_text_wrappers(r"\textbf{(D) }5") == "(D) 5"
    assert strip_text_wrappers(r"\text{\textbf{x}}") == "x"
    assert strip_text_wrappers(r"5\mathrm{cm}") == "5cm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<ref>cat</ref><box>[[10, 20, 30, 40]]</box>", [[10, 20, 30, 40]]),
        ("<box>[[1,2,3,4],[5,6,7,8]]</box>", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ("<box>[[1, 2, 3, 4]]</box> and <box>[[5, 6, 7, 8]]</box>", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ("<box>[[1, 2, 3, 4]]</box> but also [9, 9, 9, 9]", [[1, 2, 3, 4]]),  # tags win over bare lists
        ("the box is [1.5, 2, 3, 4.25]", [[1.5, 2, 3, 4.25]]),
        ("[1, 2, 3]", []),
        ("[1, 2, 3, 4, 5]", []),
        ("<box>[[1, 2, 3, 4]]", [[1, 2, 3, 4]]),  # an unclosed tag is no tag: the bare list counts
        ("[a, b, c, d]", []),
        ("[" + "9" * 400 + ", 1, 2, 3]", []),  # overflows to inf
    ],
)
def test_parse_boxes(text, expected):
    assert parse_boxes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<point>[[500, 300]]</point>", [[500, 300]]),
        ("<point>[500, 300]</point>", [[500, 300]]),
        ("click (12, 34) then (56, 78)", [[12, 34], [56, 78]]),
        ("<point>[[1, 2]]</point> (3, 4)", [[1, 2]]),
        ("(1, 2, 3)", []),
        ("nothing", []),
    ],
)
def test_parse_points(text, expected):
    assert parse_points(text) == expected


HOSTILE_TEXTS = [
    "Answer:" + " " * 200_000 + "x",
    "<box>" * 50_000,
    "<point>" * 50_000,
    "[" * 100_000 + "1, 2, 3",
    "\\boxed{" * 30_000,
    "\\text{" * 30_000,
    "Answer: " + "$" * 100_000,
    "(" + "1" * 100_000 + ", ",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_parsers_are_linear_on_hostile_text(text):
    start = time.perf_counter()
    extract_final_answer(text)
    parse_boxes(text)
    parse_points(text)
    strip_text_wrappers(text)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "module",
    [
        "parsing",
        "math_reward",
        "grounding",
        "click",
        "format_reward",
        "assignment",
        "registry",
        "runner",
        "graders",
        "geo3k",
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"cascade_rl.rewards.{module}"))
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{ 5 }", " 5 "),  # kept as written, as InternVL does
        (r"\boxed{a} \boxed{b", r"\boxed{a} \boxed{b"),  # a broken last box: the whole response, not "a"
        ("The answer is 5.", "The answer is 5."),  # no box: the whole response
        (r"\fbox{5}", r"\fbox{5}"),  # only \boxed{ counts
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    ],
)
def test_internvl_answer_is_the_last_balanced_box_else_the_response(text, expected):
    assert internvl_answer(text) == expected
    assert extract_last_boxed(text) == (None if expected == text else expected)


@pytest.mark.parametrize(("length", "ok"), [(0, False), (15, False), (20, False), (21, True), (4000, True)])
def test_internvl_format_rule_is_more_than_20_characters(length, ok):
    assert internvl_format_ok("x" * length) is ok
