"""SFT stage driven as a user would: a checkpoint directory and a jsonl of (image, question, response) rows."""

import json
from dataclasses import replace

import pytest
import torch
from stages.conftest import build

from cascade_rl.data import DataError, load_images, read_prompts
from cascade_rl.data_tools.synthetic import write_synthetic_dataset
from cascade_rl.models import encode_chat, load_policy
from cascade_rl.stages.sft import SFT_OPTIM, SFTConfig, run_sft
from cascade_rl.train.metrics import read_metrics


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """8 synthetic rows (count and locate alternating) with their images: (jsonl path, image root)."""
    root = tmp_path_factory.mktemp("shapes")
    summary = write_synthetic_dataset(root, 8, seed=0, split_name="train")
    return summary["path"], root


def config(checkpoint, data, out, **kw):
    path, root = data
    base = dict(
        model_path=str(checkpoint),
        data=str(path),
        image_root=str(root),
        out_dir=str(out),
        optim={"lr": 1e-3, "warmup_ratio": 0.0, "per_device_batch": 4, "grad_accum": 1},
        max_tiles=1,
    )
    return build(SFTConfig, base, **kw)


def reference_step_one_loss(checkpoint, data) -> tuple[float, int]:
    """Token-mean NLL of every row's response + <|im_end|>, one full forward per row: a path independent of the
    stage's batching, padding and masking."""
    model, processor = load_policy(checkpoint)
    tokenizer = processor.tokenizer
    path, root = data
    rows, _ = read_prompts(path, root)
    nll, count = 0.0, 0
    for row in rows:
        response = row.extra["response"]
        messages = row.to_messages() + [{"role": "assistant", "content": response}]
        chat = encode_chat(processor, messages, load_images(row, root), max_tiles=1)
        target = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        start = len(chat.input_ids) - 1 - len(target)  # the template's trailing "\n" follows <|im_end|>
        assert chat.input_ids[start:-1].tolist() == target  # the reply sits where we expect it
        with torch.no_grad():
            logits = model(input_ids=chat.input_ids[None], pixel_values=chat.pixel_values).logits[0]
        logps = torch.log_softmax(logits.float(), -1)
        nll -= sum(float(logps[start + k - 1, t]) for k, t in enumerate(target))
        count += len(target)
    return nll / count, count


def test_first_step_is_the_assistant_token_mean_nll(tiny_checkpoint, shapes, tmp_path):
    run_sft(config(tiny_checkpoint, shapes, tmp_path / "run", optim={"max_steps": 1, "per_device_batch": 8}))
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    expected, count = reference_step_one_loss(tiny_checkpoint, shapes)
    assert first["trained_tokens"] == count  # only reply + <|im_end|> tokens are trained
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert {"grad_norm", "lr", "token_accuracy", "tokens_per_s"} <= set(first)


def test_loss_falls_and_the_checkpoint_loads(tiny_checkpoint, shapes, tmp_path):
    summary = run_sft(config(tiny_checkpoint, shapes, tmp_path / "run", optim={"max_steps": 6}))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # max_steps overrides epochs: 6 steps × 4 rows = 3 passes over 8 rows.
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert summary["steps_run"] == 6 and summary["rows"]["kept"] == 8
    trained, _ = load_policy(summary["final"])
    start, _ = load_policy(tiny_checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


def test_accumulation_trains_like_a_bigger_batch(tiny_checkpoint, shapes, tmp_path):
    # Token-mean over the global batch: 4 × 1, 2 × 2 and 1 × 4 see the same rows per step and must give the same
    # losses. A per-micro-batch mean would weigh short count replies (8 tokens) like long locate replies.
    runs = {}
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"b{batch}"
        run_sft(
            config(
                tiny_checkpoint, shapes, out, optim={"max_steps": 3, "per_device_batch": batch, "grad_accum": accum}
            )
        )
        runs[batch] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert runs[2] == pytest.approx(runs[4], rel=1e-4)
    assert runs[1] == pytest.approx(runs[4], rel=1e-4)


def test_resume_reproduces_the_uninterrupted_trajectory(tiny_checkpoint, shapes, tmp_path, monkeypatch):
    run_sft(config(tiny_checkpoint, shapes, tmp_path / "straight", optim={"max_steps": 4, "per_device_batch": 2}))
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")

    crashing = config(
        tiny_checkpoint, shapes, tmp_path / "crash", save_steps=1, optim={"max_steps": 4, "per_device_batch": 2}
    )
    from cascade_rl.train import metrics as metrics_module

    original = metrics_module.MetricsLog.log

    def log_then_crash(self, step, values):
        out = original(self, step, values)
        if step == 3:
            raise KeyboardInterrupt("simulated crash after step 3")
        return out

    monkeypatch.setattr(metrics_module.MetricsLog, "log", log_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_sft(crashing)
    monkeypatch.setattr(metrics_module.MetricsLog, "log", original)
    summary = run_sft(crashing)  # resumes from the state saved after step 2
    assert summary["steps_run"] == 2
    by_step = {r["step"]: r for r in read_metrics(tmp_path / "crash" / "metrics.jsonl")}  # step 3 logged twice
    assert sorted(by_step) == [1, 2, 3, 4]
    for row in expected:
        for key in ("loss", "token_accuracy", "grad_norm", "lr"):
            assert by_step[row["step"]][key] == pytest.approx(row[key], rel=1e-5, abs=1e-7), (row["step"], key)


def encoded_lengths(checkpoint, data) -> list[int]:
    path, root = data
    _, processor = load_policy(checkpoint)
    rows, _ = read_prompts(path, root)
    return [
        len(
            encode_chat(
                processor,
                row.to_messages() + [{"role": "assistant", "content": row.extra["response"]}],
                load_images(row, root),
                max_tiles=1,
            ).input_ids
        )
        for row in rows
    ]


def test_overlong_rows_are_dropped_and_counted_or_refused(tiny_checkpoint, shapes, tmp_path):
    # A count row is 16 image tokens + <img></img> + chat scaffolding + an 8-token reply ("Answer: \boxed{N}" and
    # <|im_end|>); a locate row's box reply is ~20 tokens longer. 60 splits them: the locate rows (even lines) go.
    lengths = encoded_lengths(tiny_checkpoint, shapes)
    over = [i for i, n in enumerate(lengths) if n > 60]
    assert over == [1, 3, 5, 7]
    summary = run_sft(config(tiny_checkpoint, shapes, tmp_path / "drop", max_length=60, optim={"max_steps": 1}))
    assert summary["rows"]["dropped_overlong"] == 4 and summary["rows"]["kept"] == 4
    with pytest.raises(DataError, match=r"train.jsonl line 2: row is \d+ tokens, over max_length=60"):
        run_sft(
            config(
                tiny_checkpoint, shapes, tmp_path / "raise", max_length=60, on_overlong="raise", optim={"max_steps": 1}
            )
        )


def test_a_row_without_response_is_refused_with_its_line(tiny_checkpoint, shapes, tmp_path):
    path, root = shapes
    lines = open(path).read().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + [lines[2].replace('"response"', '"reply"')]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 3: missing or empty 'response'"):
        run_sft(config(tiny_checkpoint, (bad, root), tmp_path / "run", optim={"max_steps": 1}))


def test_frozen_vision_stays_put(tiny_checkpoint, shapes, tmp_path):
    summary = run_sft(config(tiny_checkpoint, shapes, tmp_path / "run", freeze_vision=True, optim={"max_steps": 2}))
    trained, start = load_policy(summary["final"])[0], load_policy(tiny_checkpoint)[0]
    for (name, a), b in zip(trained.state_dict().items(), start.state_dict().values()):
        assert torch.equal(a, b) == ("vision_tower" in name), name


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="data"):
        SFTConfig(model_path="m")
    with pytest.raises(ValueError, match="on_overlong"):
        SFTConfig(model_path="m", data="d.jsonl", on_overlong="truncate")


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_checkpoint, shapes, tmp_path):
    import socket

    from stages.ddp_worker import launch
    from stages.sft_ddp_worker import sft_rank_main

    # One process with 4 rows per step; two ranks with 2 rows each: the same global batch. Count replies are 8
    # tokens and locate replies ~28, so rank-local token means averaged by DDP would differ from the global mean;
    # normalising by the global token count makes the two runs equal.
    run_sft(config(tiny_checkpoint, shapes, tmp_path / "one", optim={"max_steps": 2, "per_device_batch": 4}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ddp = config(tiny_checkpoint, shapes, tmp_path / "two", optim={"max_steps": 2, "per_device_batch": 2})
    launch(sft_rank_main, (2, port, ddp))
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["trained_tokens"] for r in two] == [r["trained_tokens"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    model_one = load_policy(tmp_path / "one" / "final")[0].state_dict()
    model_two = load_policy(tmp_path / "two" / "final")[0].state_dict()
    for name, value in model_one.items():
        torch.testing.assert_close(model_two[name], value, atol=2e-5, rtol=1e-4, msg=name)


# The smallest shapes task on which the tiny InternVL learns to look within a few hundred steps on 2 CPU cores:
# counting only, a 2 × 2 grid (each object covers 4 of the 16 image tokens), 2 colours, 0–2 targets, 0–2
# distractors. (A 4 × 4 grid, one image token per object, needs far more steps.)
LEARNABLE = dict(kinds=("count",), grid=2, colours=("red", "blue"), max_count=2, max_distractors=2)


def best_blind_accuracy(path) -> float:
    """The accuracy of the best image-blind policy: for each question, always answer its most frequent answer."""
    from collections import Counter, defaultdict

    answers = defaultdict(Counter)
    for line in open(path):
        row = json.loads(line)
        answers[row["question"]][row["answer"]] += 1
    return sum(c.most_common(1)[0][1] for c in answers.values()) / sum(sum(c.values()) for c in answers.values())


@pytest.mark.slow  # ≈ 15 s on 2 idle cores (400 steps at ≈ 30 steps/s, two evaluations of 100 prompts)
def test_sft_learns_to_count_shapes_on_held_out_images(tiny_checkpoint, tmp_path):
    from cascade_rl.rewards.scoring import RewardSpec
    from cascade_rl.stages.eval import EVAL_SAMPLING, CorrectRule, EvalConfig, run_eval

    train = write_synthetic_dataset(tmp_path / "data", 2000, seed=1, split_name="train", **LEARNABLE)
    test = write_synthetic_dataset(tmp_path / "data", 100, seed=2, split_name="test", **LEARNABLE)

    def accuracy(checkpoint, name):
        settings = dict(rewards=[RewardSpec("math")], correct=[CorrectRule("math", 1.0)])
        out = str(tmp_path / f"{name}.json")
        return run_eval(
            EvalConfig(
                model_path=str(checkpoint),
                prompts=test["path"],
                image_root=test["image_root"],
                out=out,
                max_tiles=1,
                sampling=replace(EVAL_SAMPLING, max_new_tokens=10),
                **settings,
            )
        )["accuracy"]

    before = accuracy(tiny_checkpoint, "before")
    sft = SFTConfig(
        model_path=str(tiny_checkpoint),
        data=train["path"],
        image_root=train["image_root"],
        out_dir=str(tmp_path / "sft"),
        optim=replace(SFT_OPTIM, lr=3e-3, warmup_ratio=0.05, weight_decay=0.0, max_steps=400, per_device_batch=16),
        max_tiles=1,
    )
    summary = run_sft(sft)
    rows = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    after = accuracy(summary["final"], "after")
    blind = best_blind_accuracy(test["path"])
    assert rows[-1]["loss"] < rows[0]["loss"] / 10
    assert before == 0.0  # a random model never writes \boxed{...}
    # Learning the answer format alone reaches the blind rate at best (≈ 1/3 with 3 equally likely counts);
    # beating it by 15 points takes reading the image.
    print(f"held-out accuracy: untrained {before}, blind {blind}, after SFT {after}")
    assert after > blind + 0.15, (after, blind)
