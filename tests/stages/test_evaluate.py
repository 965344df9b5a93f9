"""Evaluation: scripted completions with hand-derived numbers, the grading rule, and greedy runs of the tiny model."""

import json
from dataclasses import replace

import pytest
from stages.conftest import build
from synthetic import shapes_image

from cascade_rl.rewards.scoring import CorrectRule, RewardSpec, grade
from cascade_rl.rollout import Rollout
from cascade_rl.stages.eval import EVAL_SAMPLING, EvalConfig, run_eval

RULES = [CorrectRule("math", 1.0), CorrectRule("iou", 0.5)]
REWARDS = [RewardSpec("math"), RewardSpec("iou")]

# (row, scripted completion). Row 3's predicted box is the gold [100, 100, 300, 300] moved right by 100:
# overlap 100 × 200 = 20000, union 2 · 40000 − 20000 = 60000, IoU 1/3 < 0.5. Row 4 has no gold at all.
CASES = [
    ({"answer": "3", "bbox": None}, "Answer: \\boxed{3}"),
    ({"answer": None, "bbox": [100, 100, 300, 300]}, "<ref>red square</ref><box>[[100, 100, 300, 300]]</box>"),
    ({"answer": "2", "bbox": None}, "Answer: \\boxed{4}"),
    ({"answer": None, "bbox": [100, 100, 300, 300]}, "<ref>red square</ref><box>[[200, 100, 400, 300]]</box>"),
    ({"answer": None, "bbox": None}, "Answer: \\boxed{1}"),
]


class ScriptedEngine:
    """Returns the scripted text for each prompt, n times; records the sampling it was asked for."""

    def __init__(self, texts: dict[str, str]):
        self.texts, self.calls = texts, []

    def generate(self, requests, *, n, sampling):
        self.calls.append((len(requests), n, sampling))
        return [
            Rollout(r.prompt_id, k, self.texts[r.prompt_id], [1], [0.0], "stop", dict(r.meta))
            for r in requests
            for k in range(n)
        ]


def write_prompts(directory, cases=CASES):
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows, texts = [], {}
    for i, (columns, text) in enumerate(cases):
        shapes_image(64, 64, seed=i).save(directory / "images" / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"images/{i}.png", "question": "Which?", **columns})
        texts[f"r{i}"] = text
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, texts


def eval_config(path, directory, **kw):
    base = dict(
        model_path="unused-with-a-given-engine",
        prompts=str(path),
        image_root=str(directory),
        out=str(directory / "out" / "eval.json"),
        rewards=REWARDS,
        correct=RULES,
        prompts_per_batch=2,
    )
    return build(EvalConfig, base, **kw)


def test_scripted_completions_give_the_hand_derived_numbers(tmp_path):
    path, texts = write_prompts(tmp_path)
    engine = ScriptedEngine(texts)
    summary = run_eval(eval_config(path, tmp_path), engine=engine)
    # Correct: row 0 (math 1) and row 1 (IoU 1); row 2 math 0, row 3 IoU 1/3, row 4 ungraded → 2 / 5.
    assert summary["accuracy"] == pytest.approx(2 / 5)
    # Totals: 1, 1, 0, 1/3 and None (→ 0): (7/3) / 5.
    assert summary["reward"] == pytest.approx(7 / 15)
    # Each reward averaged over the rows it applies to: math over rows 0, 2; iou over rows 1, 3.
    assert summary["per_reward"] == pytest.approx({"math": 0.5, "iou": 2 / 3})
    assert summary["accuracy_by_rule"] == {"math": {"accuracy": 0.5, "n": 2}, "iou": {"accuracy": 0.5, "n": 2}}
    assert (summary["n"], summary["prompts"], summary["ungraded"]) == (5, 5, 1)
    assert [c[0] for c in engine.calls] == [2, 2, 1]  # prompts_per_batch=2
    assert engine.calls[0][2].temperature == 0.0  # greedy by default
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written["accuracy"] == summary["accuracy"]
    samples = [json.loads(line) for line in open(tmp_path / "out" / "eval.samples.jsonl")]
    assert [s["correct"] for s in samples] == [True, True, False, False, False]
    assert [s["graded_by"] for s in samples] == ["math", "iou", "math", "iou", None]


def test_n_samples_per_prompt_are_each_graded(tmp_path):
    path, texts = write_prompts(tmp_path, CASES[:2])
    summary = run_eval(
        eval_config(path, tmp_path, sampling={"n": 3, "temperature": 1.0}), engine=ScriptedEngine(texts)
    )
    assert (summary["n"], summary["prompts"], summary["accuracy"]) == (6, 2, 1.0)


def test_the_first_rule_that_applies_grades_and_thresholds_are_inclusive():
    assert grade({"math": None, "iou": 0.5}, RULES) == ("iou", True)
    assert grade({"math": None, "iou": 0.49}, RULES) == ("iou", False)
    assert grade({"math": 0.0, "iou": 0.9}, RULES) == ("math", False)  # listed first, so math decides
    assert grade({"math": None, "iou": None}, RULES) == (None, False)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"not among rewards \['math'\]"):
        EvalConfig(model_path="m", prompts="p.jsonl", correct=RULES)
    with pytest.raises(ValueError, match="greedy samples would all be identical"):
        EvalConfig(model_path="m", prompts="p.jsonl", sampling=replace(EVAL_SAMPLING, n=4))


def test_greedy_evaluation_of_the_tiny_model_is_repeatable(tiny_checkpoint, tmp_path):
    path, _ = write_prompts(tmp_path, CASES[:3])
    first = run_eval(
        eval_config(path, tmp_path, model_path=str(tiny_checkpoint), sampling={"max_new_tokens": 6}, max_tiles=1)
    )
    samples = open(tmp_path / "out" / "eval.samples.jsonl").read()
    again = run_eval(
        eval_config(path, tmp_path, model_path=str(tiny_checkpoint), sampling={"max_new_tokens": 6}, max_tiles=1)
    )
    assert open(tmp_path / "out" / "eval.samples.jsonl").read() == samples
    assert again["accuracy"] == first["accuracy"] and first["n"] == 3
    # A random model does not close its answer in 6 tokens, so every completion hits the length limit.
    assert first["truncated"] == 3
