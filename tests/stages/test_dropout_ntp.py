"""The dropout-ntp stage. Scripted engine: what is asked of the engine (image-free continuations of the truncated
responses, InternVL's sampling), the pairs written (exact rows, counts, identical kept, base pairs first), bad base
pairs, and a crash at either engine call resumed to the uninterrupted result. Tiny InternVL through the CLI: counts,
prefixes at half the words, the continuation's log-probs those of the image-free prompt + prefix, and a store
cut back mid-run (a torn line included) resumed to the same pairs file. Slow: `cascade-rl run` of a tiny cascade
dropout-ntp → MPO."""

import json
from dataclasses import replace

import pytest
import torch
from stages.conftest import write_pairs, write_prompts

from cascade_rl.cli import main
from cascade_rl.data import DataError
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.rollout import Rollout, RolloutRequest
from cascade_rl.stages.dropout_ntp import NTP_SAMPLING, DropoutNTPConfig, run_dropout_ntp


class ScriptedEngine:
    """Response k of q{i}: "I count {i} squares in picture {k}." (7 words; q0: empty). A continuation of prefix P is
    P + " squares in picture 0." when P is q1's, which rebuilds q1's response 0 exactly; else P + " and 7 more."."""

    def __init__(self):
        self.calls = []

    def generate(self, requests, *, n, sampling):
        self.calls.append((requests, n, sampling))
        return [self.rollout(r, k) for r in requests for k in range(n)]

    def rollout(self, request: RolloutRequest, k: int) -> Rollout:
        prefix, i = request.assistant_prefix, int(request.prompt_id[1])
        if prefix:
            text = prefix + (" squares in picture 0." if prefix == "I count 1" else " and 7 more.")
        else:
            text = "" if i == 0 else f"I count {i} squares in picture {k}."
        return Rollout(request.prompt_id, k, text, [5, 6], [-0.5, -0.25], "stop", dict(request.meta))


def config(tmp_path, **kw) -> DropoutNTPConfig:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(tmp_path, n=4)
    settings = dict(
        model_path="unused-with-an-injected-engine",
        prompts=str(prompts),
        image_root=str(tmp_path / "images"),
        out_dir=str(tmp_path / "ntp"),
        prompts_per_batch=2,
    )
    return DropoutNTPConfig(**{**settings, **kw})


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def run_scripted(tmp_path, **kw):
    engine = ScriptedEngine()
    summary = run_dropout_ntp(config(tmp_path, sampling=replace(NTP_SAMPLING, n=2), **kw), engine=engine)
    return engine, summary


def test_continuations_are_asked_without_the_image_from_half_the_words(tmp_path):
    engine, _ = run_scripted(tmp_path, system_prompt="Be brief.")
    (responses, n, sampling), (asks, n_asks, _) = engine.calls[:2]  # batch 1: q0 and q1
    assert [r.prompt_id for r in responses] == ["q0", "q1"] and n == 2 and n_asks == 1
    assert all(len(r.images) == 1 for r in responses)
    # InternVL's DropoutNTP sampling: temperature 0.7, top_k 50, top_p 1.0, 2048 new tokens
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.max_new_tokens) == (0.7, 50, 1.0, 2048)
    # q0's responses are empty: nothing to continue. q1's two responses have 7 words: the first int(7 * 0.5) = 3 stay.
    assert [(a.prompt_id, a.assistant_prefix, a.images) for a in asks] == [
        ("q1#continue-0", "I count 1", []),
        ("q1#continue-1", "I count 1", []),
    ]
    assert asks[0].messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "How many squares?"}]},  # no image part
    ]


def test_pairs_rows_counts_identical_kept_and_base_pairs_first(tmp_path):
    base, _ = write_pairs(tmp_path / "base", n=3)
    _, summary = run_scripted(tmp_path, base_pairs=str(base))
    rows = read_jsonl(tmp_path / "ntp" / "pairs.jsonl")
    assert rows[:3] == read_jsonl(base)
    ntp = rows[3:]
    # q0: 2 empty responses, no pair; q1..q3: 2 pairs each, in file order, then by sample index.
    assert [(r["chosen_meta"]["prompt_id"], r["chosen_meta"]["sample_index"]) for r in ntp] == [
        (f"q{i}", k) for i in (1, 2, 3) for k in (0, 1)
    ]
    assert ntp[1] == {
        "image": "1.png",
        "question": "<image>\nHow many squares?",
        "chosen": "I count 1 squares in picture 1.",
        "rejected": "I count 1 squares in picture 0.",
        "answer_gt": "1",
        "chosen_meta": {"source": "dropout_ntp", "prompt_id": "q1", "sample_index": 1, "finish_reason": "stop"},
        "rejected_meta": {"source": "dropout_ntp", "start_ratio": 0.5, "prefix": "I count 1", "finish_reason": "stop"},
    }
    assert ntp[0]["rejected"] == ntp[0]["chosen"]  # q1's response 0 rebuilt exactly: kept, as InternVL keeps it
    assert ntp[4]["rejected"] == "I count 3 and 7 more."
    assert (summary["responses"], summary["n_pairs"], summary["empty_response"], summary["identical"]) == (8, 6, 2, 1)
    assert summary["base_pairs"] == 3
    assert json.loads((tmp_path / "ntp" / "dropout_ntp_summary.json").read_text()) == summary


def test_a_bad_base_pairs_row_is_named_before_any_sampling(tmp_path):
    bad = tmp_path / "base.jsonl"
    bad.write_text(json.dumps({"question": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"chosen": 1}))
    engine = ScriptedEngine()
    with pytest.raises(DataError, match=r"base.jsonl line 2: not an MMPR pair \(needs string chosen and rejected\)"):
        run_dropout_ntp(config(tmp_path, base_pairs=str(bad)), engine=engine)
    assert engine.calls == []
    with pytest.raises(DataError, match=r"base_pairs=.*missing.jsonl: no such file"):
        run_dropout_ntp(config(tmp_path, base_pairs=str(tmp_path / "missing.jsonl")), engine=engine)


class CrashingEngine(ScriptedEngine):
    """Dies at its `crash_at`-th call (0-based): 2 is batch 2's responses, 3 its continuations."""

    def __init__(self, crash_at: int):
        super().__init__()
        self.crash_at = crash_at

    def generate(self, requests, *, n, sampling):
        if len(self.calls) == self.crash_at:
            raise RuntimeError("engine died")
        return super().generate(requests, n=n, sampling=sampling)


@pytest.mark.parametrize("crash_at", [2, 3])
def test_a_crash_loses_only_the_batch_in_flight_and_a_rerun_resumes(tmp_path, crash_at):
    interrupted = config(tmp_path / "a", sampling=replace(NTP_SAMPLING, n=2))
    with pytest.raises(RuntimeError, match="engine died"):
        run_dropout_ntp(interrupted, engine=CrashingEngine(crash_at))
    assert RolloutStore(tmp_path / "a" / "ntp" / "rollouts", readonly=True).done_prompt_ids(2) == {"q0", "q1"}
    engine = ScriptedEngine()
    summary = run_dropout_ntp(interrupted, engine=engine)
    assert [r.prompt_id for r in engine.calls[0][0]] == ["q2", "q3"] and summary["prompts_already_done"] == 2
    run_scripted(tmp_path / "b")
    assert (tmp_path / "a/ntp/pairs.jsonl").read_bytes() == (tmp_path / "b/ntp/pairs.jsonl").read_bytes()
    assert summary["n_pairs"] == 6 and summary["responses"] == 8  # nothing lost, nothing twice


def cli_args(checkpoint, tmp_path, *extra) -> list[str]:
    return [
        "dropout-ntp",
        f"model_path={checkpoint}",
        f"prompts={tmp_path / 'prompts.jsonl'}",
        f"image_root={tmp_path / 'images'}",
        f"out_dir={tmp_path / 'ntp'}",
        "sampling.n=2",
        "sampling.max_new_tokens=12",
        "prompts_per_batch=2",
        "max_tiles=4",
        *extra,
    ]


def test_tiny_internvl_through_the_cli_and_a_resume_after_a_cut_store(tiny_checkpoint, tmp_path, capsys):
    write_prompts(tmp_path, n=4)
    assert main(cli_args(tiny_checkpoint, tmp_path)) == 0
    summary = json.loads((tmp_path / "ntp" / "dropout_ntp_summary.json").read_text())
    pairs = read_jsonl(tmp_path / "ntp" / "pairs.jsonl")
    assert summary["responses"] == 8 and len(pairs) == summary["n_pairs"] == 8 - summary["empty_response"]
    for pair in pairs:
        words = pair["chosen"].split(" ")
        prefix = " ".join(words[: len(words) // 2]).strip()  # ratio 0.5: int(n * 0.5) = n // 2 words
        assert pair["rejected_meta"]["prefix"] == prefix and pair["rejected"].startswith(prefix)
        assert pair["image"] and pair["question"] == "<image>\nHow many squares?"
    # Cut the store back to its first batch plus a torn line, as a crash mid-write leaves it; drop the pairs file.
    (shard,) = (tmp_path / "ntp" / "rollouts").glob("*.jsonl")
    lines = shard.read_bytes().splitlines(keepends=True)
    assert len(lines) == 8
    shard.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    first = (tmp_path / "ntp" / "pairs.jsonl").read_bytes()
    (tmp_path / "ntp" / "pairs.jsonl").unlink()
    assert main(cli_args(tiny_checkpoint, tmp_path)) == 0
    resumed = json.loads((tmp_path / "ntp" / "dropout_ntp_summary.json").read_text())
    assert resumed["prompts_already_done"] == 2 and len(resumed["store_repairs"]) == 1
    assert (tmp_path / "ntp" / "pairs.jsonl").read_bytes() == first  # seeded per prompt: the same samples again


def test_the_continuation_is_sampled_from_the_image_free_prompt_and_prefix(tiny_checkpoint, tmp_path):
    from cascade_rl.models import encode_prompt, load_policy

    write_prompts(tmp_path, n=1)
    assert main(cli_args(tiny_checkpoint, tmp_path, "sampling.n=1")) == 0
    (record,) = RolloutStore(tmp_path / "ntp" / "rollouts", readonly=True).iter_records()
    ntp = record.meta["dropout_ntp"]
    assert ntp["prefix"] and len(ntp["token_ids"]) > 0
    # Teacher forcing, independently of the engine: the question without its image, the prefix's own tokens, then the
    # continuation; its recorded log-probs are log_softmax(logits / 0.7) there (with the image they would differ).
    model, processor = load_policy(tiny_checkpoint)
    text_only = [{"role": "user", "content": [{"type": "text", "text": "How many squares?"}]}]
    prompt = encode_prompt(processor, text_only, max_tiles=4).input_ids
    prefix = processor.tokenizer(ntp["prefix"], add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt, torch.tensor(prefix + ntp["token_ids"])])
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].float()
    start = len(prompt) + len(prefix)
    logps = torch.log_softmax(logits[start - 1 : -1] / 0.7, -1).gather(-1, ids[start:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(ntp["logprobs"]), logps, atol=2e-4, rtol=1e-4)
    eos = processor.tokenizer.eos_token_id
    body = ntp["token_ids"][:-1] if ntp["token_ids"][-1] == eos else ntp["token_ids"]
    assert ntp["rejected"] == ntp["prefix"] + processor.tokenizer.decode(body)


@pytest.mark.slow  # about 20 s: sampling, then an MPO step with its reference pass
def test_a_tiny_cascade_trains_mpo_on_the_dropout_ntp_pairs(tiny_checkpoint, tmp_path):
    import yaml

    write_prompts(tmp_path, n=4)
    recipe = {
        "name": "ntp",
        "runs_dir": str(tmp_path / "runs"),
        "model_path": str(tiny_checkpoint),
        "stages": ["dropout-ntp", "mpo"],
        "data": {"open_ended": str(tmp_path / "prompts.jsonl"), "image_root": str(tmp_path / "images")},
        "dropout_ntp": {"max_tiles": 4, "sampling": {"n": 2, "max_new_tokens": 12}},
        "mpo": {"max_tiles": 4, "optim": {"max_steps": 1, "per_device_batch": 2, "lr": 1e-3, "warmup_ratio": 0.0}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "recipe.yaml")]) == 0
    manifest = json.loads((tmp_path / "runs" / "ntp" / "manifest.json").read_text())
    ntp, mpo = manifest["stages"]["dropout-ntp"], manifest["stages"]["mpo"]
    assert ntp["status"] == mpo["status"] == "done"
    assert mpo["inputs"]["pairs"] == ntp["outputs"]["pairs"] == str(tmp_path / "runs/ntp/03_dropout-ntp/pairs.jsonl")
    assert ntp["summary"]["n_pairs"] == len(read_jsonl(ntp["outputs"]["pairs"])) > 0
    assert (tmp_path / "runs/ntp/04_mpo/final/config.json").is_file()
