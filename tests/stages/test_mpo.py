"""MPO stage driven as a user would: from a checkpoint directory and an MMPR pairs file."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from stages.conftest import build
from synthetic import shapes_image

from cascade_rl.data import DataError, row_from_record
from cascade_rl.models import load_policy
from cascade_rl.models.chat import process_images, tile_counts
from cascade_rl.models.pairs import encode_pair
from cascade_rl.stages.mpo import MPOConfig, run_mpo
from cascade_rl.train.metrics import read_metrics
from cascade_rl.train.pair_data import PairFileSummary, load_pairs


def config(tiny_checkpoint, pairs_file, out, **kw):
    path, images = pairs_file
    base = dict(
        model_path=str(tiny_checkpoint),
        pairs=str(path),
        image_root=str(images),
        out_dir=str(out),
        optim={"lr": 1e-3, "warmup_ratio": 0.0, "per_device_batch": 2, "grad_accum": 1},
        max_tiles=4,
    )
    return build(MPOConfig, base, **kw)


def test_first_step_losses_and_a_loadable_checkpoint(tiny_checkpoint, pairs_file, tmp_path):
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "run", optim={"max_steps": 3}))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    first = rows[0]
    # Step 1: the policy is the reference, so h_c = h_r = 0: DPO = -log σ(0) = ln 2, δ = 0 and
    # BCO = -log σ(0) - log σ(0) = 2 ln 2, reward accuracy 0 (no pair has β·h_c > β·h_r).
    assert first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["bco_loss"] == pytest.approx(2 * math.log(2), abs=1e-5)
    assert first["delta"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(0.8 * math.log(2) + 0.2 * 2 * math.log(2) + first["lm_loss"], abs=1e-5)
    assert rows[-1]["dpo_loss"] < math.log(2)  # the policy moved toward the chosen answers
    assert {"grad_norm", "lr", "tokens_per_s", "reward_accuracy", "reward_margin"} <= set(first)
    trained, _ = load_policy(summary["final"])
    start, _ = load_policy(tiny_checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


def test_resume_reproduces_the_uninterrupted_trajectory(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    straight = config(
        tiny_checkpoint, pairs_file, tmp_path / "straight", optim={"max_steps": 3, "per_device_batch": 1}
    )
    run_mpo(straight)
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")

    crashing = config(
        tiny_checkpoint, pairs_file, tmp_path / "crash", save_steps=1, optim={"max_steps": 3, "per_device_batch": 1}
    )
    from cascade_rl.train import metrics as metrics_module

    original = metrics_module.MetricsLog.log

    def log_then_crash(self, step, values):
        out = original(self, step, values)
        if step == 2:
            raise KeyboardInterrupt("simulated crash after step 2")
        return out

    monkeypatch.setattr(metrics_module.MetricsLog, "log", log_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_mpo(crashing)
    monkeypatch.setattr(metrics_module.MetricsLog, "log", original)
    run_mpo(crashing)  # resumes from the state saved after step 1
    resumed = read_metrics(tmp_path / "crash" / "metrics.jsonl")
    by_step = {r["step"]: r for r in resumed}  # step 2 was logged twice: before the crash and after the resume
    assert sorted(by_step) == [1, 2, 3]
    for row in expected:
        for key in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta", "lr"):
            assert by_step[row["step"]][key] == pytest.approx(row[key], rel=1e-5, abs=1e-7), (row["step"], key)


def test_reference_cache_is_reused(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    cfg = config(tiny_checkpoint, pairs_file, tmp_path / "run", optim={"max_steps": 1})
    run_mpo(cfg)
    caches = list((tmp_path / "run").glob("reference_logps-*.pt"))
    assert len(caches) == 1
    from cascade_rl.train import reference

    def forbidden(*args, **kwargs):
        raise AssertionError("reference log-probs recomputed although the cache matches")

    monkeypatch.setattr(reference, "sharded_sequence_logps", forbidden)
    (tmp_path / "run" / "state").mkdir(exist_ok=True)
    run_mpo(MPOConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "run")}))


def test_live_reference_trains_like_precomputed(tiny_checkpoint, pairs_file, tmp_path):
    run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "pre", optim={"max_steps": 2}))
    run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "live", reference="live", optim={"max_steps": 2}))
    pre, live = read_metrics(tmp_path / "pre" / "metrics.jsonl"), read_metrics(tmp_path / "live" / "metrics.jsonl")
    for a, b in zip(pre, live):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_overlong_pairs_are_dropped_and_counted_or_refused(tiny_checkpoint, pairs_file, tmp_path):
    # Odd rows have 128×64 images: 2 tiles + thumbnail = 48 image tokens, plus <img>, </img> and the chat
    # scaffolding (≥ 14 tokens), so their prompts alone exceed 64. Even rows (64×64, 1 tile = 16 image tokens)
    # total at most 62 tokens with their longest completion.
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "drop", max_length=64, optim={"max_steps": 1}))
    assert summary["pairs"]["dropped_overlong"] == 3 and summary["pairs"]["kept"] == 3
    with pytest.raises(DataError, match=r"pairs.jsonl line 2: pair is \d+ tokens, over max_length=64"):
        run_mpo(
            config(
                tiny_checkpoint,
                pairs_file,
                tmp_path / "raise",
                max_length=64,
                on_overlong="raise",
                optim={"max_steps": 1},
            )
        )


def test_frozen_vision_stays_put(tiny_checkpoint, pairs_file, tmp_path):
    summary = run_mpo(
        config(tiny_checkpoint, pairs_file, tmp_path / "run", freeze_vision=True, optim={"max_steps": 2})
    )
    trained, start = load_policy(summary["final"])[0], load_policy(tiny_checkpoint)[0]
    for (name, a), b in zip(trained.state_dict().items(), start.state_dict().values()):
        assert torch.equal(a, b) == ("vision_tower" in name), name


def test_lora_checkpoint_is_merged_plain_weights(tiny_checkpoint, pairs_file, tmp_path):
    summary = run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "run", lora_rank=4, optim={"max_steps": 2}))
    trained, start = load_policy(summary["final"])[0], load_policy(tiny_checkpoint)[0]
    assert trained.state_dict().keys() == start.state_dict().keys()  # no lora_ keys left
    changed = {
        n for (n, a), b in zip(trained.state_dict().items(), start.state_dict().values()) if not torch.equal(a, b)
    }
    assert changed and all("language_model" in n and "proj" in n for n in changed)


def test_cli_runs_mpo_from_yaml_with_overrides(tiny_checkpoint, pairs_file, tmp_path, capsys):
    from cascade_rl.cli import main

    path, images = pairs_file
    recipe = tmp_path / "mpo.yaml"
    recipe.write_text(f"model_path: {tiny_checkpoint}\npairs: {path}\nimage_root: {images}\nmax_tiles: 4\n")
    assert main(["mpo", str(recipe), f"out_dir={tmp_path / 'run'}", "optim.max_steps=1", "optim.lr=1e-3"]) == 0
    assert '"steps_run": 1' in capsys.readouterr().out
    assert main(["mpo", str(recipe), "betta=0.2"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'betta'" in err and "Traceback" not in err
    assert main(["--debug", "mpo", str(recipe), "betta=0.2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "cascade-rl mpo: unknown key 'betta'" in err


def tensors_in(obj) -> list[torch.Tensor]:
    """Every tensor reachable from `obj` through dataclass fields, dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        return []
    return [t for child in children for t in tensors_in(child)]


class EagerPairs(list):
    """The loader as it was: every pair encoded up front, pixels resident; `encode(i)` just returns pair i."""

    def encode(self, i: int):
        return self[i]

    def fingerprint(self) -> str:
        return "eager"  # the reference cache key; each run here has its own out_dir, so its own cache


def eager_pairs(path, images, processor, *, max_tiles: int) -> EagerPairs:
    """Every pair of `path` encoded straight from the file and PIL, independently of load_pairs."""
    pairs = EagerPairs()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        row = row_from_record(record, f"line {lineno}")
        with Image.open(images / record["image"]) as image:
            images_rgb = [image.convert("RGB")]
        pairs.append(
            encode_pair(
                processor, row.to_messages(), images_rgb, record["chosen"], record["rejected"], max_tiles=max_tiles
            )
        )
    return pairs


def test_loaded_pairs_hold_no_pixels_and_encode_like_the_eager_path(tiny_checkpoint, pairs_file):
    path, images = pairs_file
    processor = load_policy(tiny_checkpoint)[1]
    source, summary = load_pairs(
        path, processor, image_root=str(images), max_tiles=4, max_length=16384, on_overlong="raise"
    )
    assert len(source) == summary.kept == summary.rows == 6
    assert source.rows and not tensors_in(source.rows)  # text, paths and counts only: no pixels, no token ids
    for i, eager in enumerate(eager_pairs(path, images, processor, max_tiles=4)):
        lazy = source.encode(i)
        for name in ("prompt_ids", "pixel_values", "chosen_ids", "rejected_ids"):
            assert torch.equal(getattr(lazy, name), getattr(eager, name)), (i, name)
        assert source.num_tokens(i) == lazy.num_tokens
    assert {len(source.encode(i).pixel_values) for i in range(2)} == {1, 3}  # 64×64: 1 tile; 128×64: 2 + thumbnail


def test_lazy_pairs_train_like_pairs_encoded_up_front(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    run_mpo(
        config(
            tiny_checkpoint,
            pairs_file,
            tmp_path / "lazy",
            optim={"max_steps": 2, "per_device_batch": 1, "grad_accum": 2},
        )
    )
    from cascade_rl.stages import mpo as mpo_module

    def load_eagerly(paths, processor, *, max_tiles, **_):
        (path,) = paths  # the stage passes its pair files: here the one pairs file
        pairs = eager_pairs(Path(path), pairs_file[1], processor, max_tiles=max_tiles)
        return pairs, PairFileSummary(rows=len(pairs), kept=len(pairs))

    monkeypatch.setattr(mpo_module, "load_pairs", load_eagerly)
    run_mpo(
        config(
            tiny_checkpoint,
            pairs_file,
            tmp_path / "eager",
            optim={"max_steps": 2, "per_device_batch": 1, "grad_accum": 2},
        )
    )
    lazy, eager = read_metrics(tmp_path / "lazy" / "metrics.jsonl"), read_metrics(tmp_path / "eager" / "metrics.jsonl")
    assert len(lazy) == len(eager) == 2
    for a, b in zip(lazy, eager):
        for key in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
    trained = [load_policy(tmp_path / run / "final")[0].state_dict() for run in ("lazy", "eager")]
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], atol=1e-7, rtol=1e-6, msg=name)


@pytest.mark.parametrize("max_tiles", [1, 4, 12])
def test_tile_counts_from_image_sizes_match_tiling(tiny_internvl, max_tiles):
    processor = tiny_internvl[1]
    sizes = [(64, 64), (128, 64), (64, 200), (300, 90), (17, 500), (1000, 1000), (500, 31)]
    _, tiled = process_images(processor, [shapes_image(w, h) for w, h in sizes], max_tiles=max_tiles)
    assert tile_counts(processor, sizes, max_tiles=max_tiles) == tiled


def test_image_problems_are_found_at_load_time_and_changes_at_encode_time(tiny_checkpoint, pairs_file):
    path, images = pairs_file
    processor = load_policy(tiny_checkpoint)[1]
    load = dict(image_root=str(images), max_tiles=4, max_length=16384, on_overlong="raise")
    (images / "img3.png").rename(images / "gone.png")
    with pytest.raises(DataError, match=r"pairs.jsonl line 4: image 'img3.png' not found under image_root="):
        load_pairs(path, processor, **load)
    (images / "gone.png").rename(images / "img3.png")
    source, _ = load_pairs(path, processor, **load)
    shapes_image(64, 64).save(images / "img3.png")  # was 128×64 (3 tiles) when measured
    with pytest.raises(DataError, match=r"pairs.jsonl line 4: pair encodes to \d+ tokens but measured \d+"):
        source.encode(3)


def test_metrics_reach_tensorboard_and_offline_wandb(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")  # offline-capable: nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run_mpo(config(tiny_checkpoint, pairs_file, out, log_with=["tensorboard", "wandb"], optim={"max_steps": 2}))
    logged = read_metrics(out / "metrics.jsonl")
    events = list((out / "trackers" / "cascade_rl_mpo").glob("events.out.tfevents.*"))  # hparams go one level down
    assert len(events) == 1, events
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    for key in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta", "lr", "grad_norm"):
        steps = [(e.step, e.value) for e in board.Scalars(key)]
        assert [s for s, _ in steps] == [1, 2], key
        assert [v for _, v in steps] == pytest.approx([row[key] for row in logged], rel=1e-6), key
    offline_runs = list((out / "trackers").rglob("offline-run-*"))
    assert offline_runs and any(offline_runs[0].rglob("*.wandb")), offline_runs


def test_bf16_autocast_tracks_fp32(tiny_checkpoint, pairs_file, tmp_path):
    # mixed_precision="bf16" runs the forward under bf16 autocast (on the CPU here, as on a GPU); log-probs and the
    # losses are computed in fp32 from the bf16 logits, and the weights stay fp32. Three steps stay within bf16's
    # resolution (8 mantissa bits: ~4e-3 relative) of the fp32 run.
    runs = {}
    for precision in ("no", "bf16"):
        out = tmp_path / precision
        run_mpo(config(tiny_checkpoint, pairs_file, out, optim={"max_steps": 3, "mixed_precision": precision}))
        runs[precision] = read_metrics(out / "metrics.jsonl")
    for fp32, bf16 in zip(runs["no"], runs["bf16"]):
        for key in ("loss", "dpo_loss", "lm_loss", "grad_norm"):
            assert bf16[key] == pytest.approx(fp32[key], rel=1e-2), (fp32["step"], key)
    assert runs["bf16"][0]["loss"] != runs["no"][0]["loss"]  # autocast did run in bf16
    trained = load_policy(tmp_path / "bf16" / "final")[0]
    assert {p.dtype for p in trained.parameters()} == {torch.float32}


def test_a_format_pairs_file_trains_as_if_appended_to_the_pairs_file(tiny_checkpoint, pairs_file, tmp_path):
    """The pairs stage writes correctness and format pairs to two files; MPO reads both, in that order."""
    path, images = pairs_file
    lines = path.read_text().splitlines(keepends=True)
    head, tail, empty = tmp_path / "correctness.jsonl", tmp_path / "format_rules.jsonl", tmp_path / "none.jsonl"
    head.write_text("".join(lines[:4]))
    tail.write_text("".join(lines[4:]))
    empty.write_text("")
    optim = {"max_steps": 2, "per_device_batch": 2}
    run_mpo(config(tiny_checkpoint, pairs_file, tmp_path / "one", optim=optim))
    split = config(tiny_checkpoint, (head, images), tmp_path / "two", format_pairs=str(tail), optim=optim)
    summary = run_mpo(split)
    assert (summary["pairs"]["rows"], summary["pairs"]["kept"]) == (6, 6)
    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    for key in ("loss", "dpo_loss", "bco_loss", "lm_loss"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=1e-6), key
    # No format negatives: the pairs stage still writes the (empty) file, and MPO trains on the other one.
    processor = load_policy(tiny_checkpoint)[1]
    load = dict(image_root=str(images), max_tiles=4, max_length=16384, on_overlong="raise")
    source, loaded = load_pairs([head, empty], processor, **load)
    assert len(source) == loaded.rows == 4
