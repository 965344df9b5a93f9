"""The MPO stage reads InternVL's MMPR meta json directly (`mmpr_meta`), beside our pairs file: per-dataset image
roots and tile budgets, repeat_time drawn with the stage seed or repeating, bad entries named. Driven by the CLI."""

import json
import random
import re

import pytest
from synthetic import shapes_image

from cascade_rl.cli import main
from cascade_rl.train import pair_data

GEO_LINES, GEO_REPEAT = 5, 0.4  # int(5 × 0.4) = 2 lines kept, drawn at random with the stage seed
CHART_LINES, CHART_REPEAT = 2, 3  # each line 3 times: 6 rows


def write_dataset(folder, name: str, n: int, size: tuple[int, int]) -> None:
    """folder/ann/<name>.jsonl with n pairs over rendered images folder/<name>_images/<name><k>.png."""
    (folder / f"{name}_images").mkdir(parents=True)
    (folder / "ann").mkdir(exist_ok=True)
    lines = []
    for k in range(n):
        shapes_image(*size, seed=k).save(folder / f"{name}_images" / f"{name}{k}.png")
        question = f"<image>\n{name} question {k}: how many squares?"
        lines.append({"image": f"{name}{k}.png", "question": question, "chosen": f"Answer: {k}", "rejected": "No"})
    (folder / "ann" / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def mmpr_meta(tmp_path):
    """An MMPR meta json with two datasets of 256×64 images: geo (5 lines, repeat_time 0.4, max_dynamic_patch 2) and
    chart (2 lines, repeat_time 3, no max_dynamic_patch: the stage's max_tiles applies)."""
    folder = tmp_path / "mmpr"
    write_dataset(folder, "geo", GEO_LINES, (256, 64))
    write_dataset(folder, "chart", CHART_LINES, (256, 64))
    meta = {
        "geo": {
            "root": "geo_images",
            "annotation": "ann/geo.jsonl",
            "repeat_time": GEO_REPEAT,
            "max_dynamic_patch": 2,
            "data_augment": False,
            "length": GEO_LINES,
        },
        "chart": {"root": "chart_images", "annotation": "ann/chart.jsonl", "repeat_time": CHART_REPEAT},
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


def recipe(tmp_path, checkpoint, meta, pairs_file=None) -> str:
    lines = [f"model_path: {checkpoint}", f"mmpr_meta: {meta}", "max_tiles: 3"]
    if pairs_file is not None:
        lines += [f"pairs: {pairs_file[0]}", f"image_root: {pairs_file[1]}"]
    path = tmp_path / "mpo.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def record_encoded_tiles(monkeypatch) -> list[tuple[str, int]]:
    """(source "file line N", tiles) of every pair the stage encodes (reference pass and training)."""
    seen, original = [], pair_data.PairSource.encode

    def encode(self, i):
        pair = original(self, i)
        seen.append((self.rows[i].row.source, len(pair.pixel_values)))
        return pair

    monkeypatch.setattr(pair_data.PairSource, "encode", encode)
    return seen


def a_seed_that_is_not_the_head() -> tuple[int, list[int]]:
    """A seed whose draw of 2 of geo's 5 lines (InternVL3.5: `random.sample` after seeding; kept in file order) is
    not the first two lines, which InternVL2.x / 3.0 would keep; and the lines it draws (1-based)."""
    for seed in range(10):
        drawn = sorted(random.Random(seed).sample(range(GEO_LINES), int(GEO_LINES * GEO_REPEAT)))
        if drawn != [0, 1]:
            return seed, [k + 1 for k in drawn]
    raise AssertionError("no seed in 0..9 draws other than the head")


def test_mpo_trains_on_an_mmpr_meta_beside_a_pairs_file(tiny_checkpoint, pairs_file, mmpr_meta, tmp_path, monkeypatch):
    seed, geo_lines = a_seed_that_is_not_the_head()
    seen = record_encoded_tiles(monkeypatch)
    out = tmp_path / "run"
    # 6 pairs from the file + 2 geo + 6 chart = 14 pairs: 2 steps of 7 see each once
    overrides = [f"out_dir={out}", f"seed={seed}", "optim.per_device_batch=7", "optim.max_steps=2", "optim.lr=1e-3"]
    assert main(["mpo", recipe(tmp_path, tiny_checkpoint, mmpr_meta, pairs_file), *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_run"] == 2
    assert (summary["pairs"]["rows"], summary["pairs"]["kept"]) == (6, 6)
    assert summary["mmpr"]["per_dataset"] == {"geo": 2, "chart": 6}
    assert (summary["mmpr"]["rows"], summary["mmpr"]["kept"]) == (8, 8)

    tiles_by_source = {}
    for source, tiles in seen:
        assert tiles_by_source.setdefault(source, tiles) == tiles, source  # a row always tiles the same way
    # Tiny tiles are 64 px, and a grid (i, j) of i·j ≤ budget closest to the image's aspect ratio is chosen, plus a
    # thumbnail when it has more than one tile. 256×64 (ratio 4): geo's max_dynamic_patch 2 allows at most (2, 1),
    # 2 + 1 = 3 tiles; chart falls back to max_tiles 3: (3, 1), 3 + 1 = 4 tiles. The pairs file (image_root,
    # max_tiles 3): 64×64 → 1 tile, 128×64 (ratio 2) → (2, 1) + thumbnail = 3.
    expected = {f"{mmpr_meta.parent / 'ann' / 'geo.jsonl'} line {k}": 3 for k in geo_lines}
    expected |= {f"{mmpr_meta.parent / 'ann' / 'chart.jsonl'} line {k}": 4 for k in (1, 2)}
    expected |= {f"{pairs_file[0]} line {k}": 1 if k % 2 else 3 for k in range(1, 7)}
    assert tiles_by_source == expected
    # each of the 14 pairs scored once by the reference pass and once in training; chart's lines 3 times each
    chart_encodes = [s for s, _ in seen if s.endswith(("chart.jsonl line 1", "chart.jsonl line 2"))]
    assert len(seen) == 2 * 14 and len(chart_encodes) == 2 * 6


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda meta: meta["chart"].update(annotation="ann/missing.jsonl"),
            r"meta.json entry 'chart': annotation 'ann/missing.jsonl' not found \(tried .*\); fix the path",
        ),
        (
            lambda meta: meta["geo"].update(max_dynamic_patches=6),
            r"meta.json entry 'geo': unknown key\(s\) \['max_dynamic_patches'\]; valid keys: root, annotation, "
            r"repeat_time, max_dynamic_patch, data_augment, length; fix or remove them",
        ),
        (
            lambda meta: meta["geo"].update(root="elsewhere"),
            r"ann/geo.jsonl line \d: image 'geo\d.png' not found under image_root=.*/elsewhere; fix the path",
        ),
    ],
    ids=["missing-annotation", "bad-key", "wrong-root"],
)
def test_a_bad_meta_entry_is_named_with_its_fix(tiny_checkpoint, mmpr_meta, tmp_path, capsys, edit, message):
    meta = json.loads(mmpr_meta.read_text())
    edit(meta)
    mmpr_meta.write_text(json.dumps(meta))
    assert main(["mpo", recipe(tmp_path, tiny_checkpoint, mmpr_meta), f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_mpo_needs_pairs_or_an_mmpr_meta(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "mpo.yaml").write_text(f"model_path: {tiny_checkpoint}\n")
    assert main(["mpo", str(tmp_path / "mpo.yaml")]) == 2
    assert "pairs (a pairs file, or mmpr_meta: an MMPR meta json, or both) are required" in capsys.readouterr().err
