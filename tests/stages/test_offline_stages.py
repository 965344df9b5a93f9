"""Offline stage end to end on the tiny InternVL: rollout → score → store → ledger → pairs → filter; resume."""

import json
from dataclasses import replace

import pytest
from stages.conftest import write_prompts

from cascade_rl.data import DataError
from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.rollout import Rollout
from cascade_rl.stages.filter import FilterStageConfig, run_filter
from cascade_rl.stages.pairs import PairsStageConfig, run_pairs
from cascade_rl.stages.rollout import ROLLOUT_SAMPLING, RolloutStageConfig, run_rollouts


class ScriptedEngine:
    """An engine whose sample k of prompt q{i} answers `i` when k < i, else `i + 1` (pass rate i / n)."""

    def __init__(self):
        self.calls = []

    def generate(self, requests, *, n, sampling):
        self.calls.append([r.prompt_id for r in requests])
        out = []
        for r in requests:
            i = int(r.prompt_id[1:])
            for k in range(n):
                value = i if k < i else i + 1
                text = f"I count {value}. Answer: \\boxed{{{value}}}"
                out.append(Rollout(r.prompt_id, k, text, [1, 2, 3], [-0.1, -0.2, -0.3], "stop", dict(r.meta)))
        return out


def config(tmp_path, prompts, **kw):
    return RolloutStageConfig(
        model_path="unused-with-an-injected-engine",
        prompts=str(prompts),
        image_root=str(prompts.parent / "images"),
        out_dir=str(tmp_path / "offline"),
        prompts_per_batch=2,
        sampling=replace(ROLLOUT_SAMPLING, n=4),
        **kw,
    )


def test_scripted_rollouts_give_the_expected_ledger_pairs_and_filter(tmp_path):
    prompts = write_prompts(tmp_path)
    summary = run_rollouts(config(tmp_path, prompts), engine=ScriptedEngine())
    assert summary["rollouts"] == 16
    ledger = PassRateLedger.load(tmp_path / "offline" / "ledger.json")
    # q_i: samples k < i are right, so pass rates 0/4, 1/4, 2/4, 3/4.
    assert [ledger.pass_rate(f"q{i}") for i in range(4)] == [0.0, 0.25, 0.5, 0.75]
    pairs = run_pairs(PairsStageConfig(rollouts=str(tmp_path / "offline" / "rollouts"), out=str(tmp_path / "p.jsonl")))
    # q0 is all wrong (no pairs); q1: 1×3, q2: 2×2, q3: 3×1 pairs, but the texts of one prompt repeat, so
    # after de-duplication each prompt keeps one (chosen, rejected) pair.
    rows = [json.loads(line) for line in open(tmp_path / "p.jsonl")]
    assert pairs["pairs"] == len(rows) == 3
    assert all("\\boxed{" + r["answer_gt"] + "}" in r["chosen"] for r in rows)
    kept = run_filter(
        FilterStageConfig(
            ledger=str(tmp_path / "offline" / "ledger.json"), prompts=str(prompts), out=str(tmp_path / "online.jsonl")
        )
    )
    assert kept["kept"] == 3  # 0.25, 0.5 and 0.75 lie in [0.2, 0.8]; 0.0 does not
    assert [json.loads(line)["id"] for line in open(tmp_path / "online.jsonl")] == ["q1", "q2", "q3"]


def test_pairs_and_filter_refuse_to_hand_on_nothing(tmp_path):
    prompts = write_prompts(tmp_path)
    run_rollouts(config(tmp_path, prompts), engine=ScriptedEngine())
    ledger = str(tmp_path / "offline" / "ledger.json")
    narrow = FilterStageConfig(ledger=ledger, prompts=str(prompts), out=str(tmp_path / "o.jsonl"), low=0.9, high=1.0)
    with pytest.raises(DataError, match=r"ledger.json: none of its 4 prompts has a pass rate in \[0.9, 1.0\].*widen"):
        run_filter(narrow)  # pass rates are 0, 0.25, 0.5 and 0.75
    store = RolloutStore(tmp_path / "only_q0", readonly=False)
    store.append(
        [
            r
            for r in RolloutStore(tmp_path / "offline" / "rollouts", readonly=True).iter_records()
            if r.prompt_id == "q0"
        ]
    )
    store.close()
    with pytest.raises(DataError, match=r"only_q0: no preference pair could be built.*sampling.n"):
        run_pairs(PairsStageConfig(rollouts=str(tmp_path / "only_q0"), out=str(tmp_path / "none.jsonl")))


class TerseFirstEngine(ScriptedEngine):
    """ScriptedEngine, but sample 0 of every prompt gives its answer bare: `\\boxed{v}`, 9 characters."""

    def generate(self, requests, *, n, sampling):
        out = super().generate(requests, n=n, sampling=sampling)
        return [replace(r, text=r.text.split("Answer: ")[1]) if r.sample_index == 0 else r for r in out]


def test_pairs_stage_writes_correctness_and_format_pairs_through_the_cli(tmp_path, capsys):
    from cascade_rl.cli import main

    prompts = write_prompts(tmp_path)
    run_rollouts(config(tmp_path, prompts), engine=TerseFirstEngine())
    settings = tmp_path / "pairs.yaml"
    settings.write_text(f"rollouts: {tmp_path / 'offline' / 'rollouts'}\nout: {tmp_path / 'pairs.jsonl'}\n")
    summary_file = tmp_path / "pairs.jsonl.summary.json"
    assert main(["pairs", str(settings)]) == 0
    result = json.loads(summary_file.read_text())
    assert result["format_out"] == str(tmp_path / "pairs_format_rules.jsonl")
    pairs = [json.loads(line) for line in open(tmp_path / "pairs.jsonl")]
    format_pairs = [json.loads(line) for line in open(tmp_path / "pairs_format_rules.jsonl")]
    # q_i: samples k < i answer i (right), the others i + 1; sample 0 is 9 characters, a format negative under
    # InternVL's rule even when right. q0 and q1 then have no positive; q2: 1 positive x 2 identical negatives and
    # x 1 format negative; q3: 2 identical positives x 1 negative and x 1 format negative: one pair of each kind.
    assert (result["n_positive"], result["n_negative"], result["n_format_negative"]) == (3, 9, 4)
    assert [(p["answer_gt"], p["rejected"]) for p in format_pairs] == [("2", "\\boxed{2}"), ("3", "\\boxed{3}")]
    assert [p["answer_gt"] for p in pairs] == ["2", "3"] and result["pairs"] == 2
    # The strict rule reads the bare box as an answer: sample 0 is graded like the others, and nothing is a format
    # negative; q1 now has its right sample 0 against three identical wrong ones.
    assert main(["pairs", str(settings), "answer_rule=strict"]) == 0
    strict = json.loads(summary_file.read_text())
    assert (strict["n_positive"], strict["n_format_negative"], strict["n_format_pairs"]) == (6, 0, 0)
    assert strict["pairs"] == 1 + 2 + 2  # q1: 1 x 1 distinct; q2: 2 distinct x 1; q3: 2 distinct x 1
    assert (tmp_path / "pairs_format_rules.jsonl").read_text() == ""
    capsys.readouterr()
    assert main(["pairs", str(settings), "answer_rule=lenient"]) == 2
    assert "answer_rule" in capsys.readouterr().err


class CrashingEngine(ScriptedEngine):
    def generate(self, requests, *, n, sampling):
        if self.calls:
            raise RuntimeError("engine died")
        return super().generate(requests, n=n, sampling=sampling)


def test_a_crash_loses_only_the_batch_in_flight_and_a_rerun_resumes(tmp_path):
    prompts = write_prompts(tmp_path)
    with pytest.raises(RuntimeError, match="engine died"):
        run_rollouts(config(tmp_path, prompts), engine=CrashingEngine())
    assert RolloutStore(tmp_path / "offline" / "rollouts", readonly=True).done_prompt_ids(4) == {"q0", "q1"}
    engine = ScriptedEngine()
    summary = run_rollouts(config(tmp_path, prompts), engine=engine)
    assert engine.calls == [["q2", "q3"]] and summary["prompts_already_done"] == 2
    write_prompts(tmp_path / "straight")
    run_rollouts(config(tmp_path / "straight", tmp_path / "straight" / "prompts.jsonl"), engine=ScriptedEngine())
    resumed = sorted(
        (r.prompt_id, r.sample_index, r.text)
        for r in RolloutStore(tmp_path / "offline" / "rollouts", readonly=True).iter_records()
    )
    straight = sorted(
        (r.prompt_id, r.sample_index, r.text)
        for r in RolloutStore(tmp_path / "straight" / "offline" / "rollouts", readonly=True).iter_records()
    )
    assert resumed == straight and len(resumed) == 16


def test_bad_prompt_rows_are_named_or_skipped(tmp_path):
    prompts = write_prompts(tmp_path)
    with open(prompts, "a") as f:
        f.write(json.dumps({"id": "bad", "image": "missing.png", "question": "How many?", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"prompts.jsonl line 5: image 'missing.png' not found"):
        run_rollouts(config(tmp_path, prompts), engine=ScriptedEngine())
    summary = run_rollouts(config(tmp_path, prompts, on_error="skip"), engine=ScriptedEngine())
    assert summary["prompts_skipped_bad_input"] == 1 and summary["rollouts"] == 16


def test_tiny_internvl_rollouts_through_the_cli(tiny_checkpoint, tmp_path, capsys):
    from cascade_rl.cli import main

    prompts = write_prompts(tmp_path, n=2)
    args = [
        f"model_path={tiny_checkpoint}",
        f"prompts={prompts}",
        f"image_root={tmp_path / 'images'}",
        f"out_dir={tmp_path / 'run'}",
        "sampling.n=2",
        "sampling.max_new_tokens=6",
        "max_tiles=4",
    ]
    assert main(["rollout", *args]) == 0
    assert '"rollouts": 4' in capsys.readouterr().out
    records = list(RolloutStore(tmp_path / "run" / "rollouts", readonly=True).iter_records())
    assert len(records) == 4 and all(len(r.token_ids) == len(r.logprobs) > 0 for r in records)
    assert main(["rollout", *args]) == 0  # a rerun finds every prompt done
    assert '"prompts_already_done": 2' in capsys.readouterr().out
