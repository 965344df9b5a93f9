"""MMPR import/export: meta json + jsonl, repeat_time, round trip, bad rows named by file:line."""

import json
import random

import pytest

from cascade_rl.data import DataError
from cascade_rl.data_tools.mmpr import apply_repeat_time, load_mmpr, read_mmpr_meta, write_mmpr


def pair(k, image=None):
    row = {"question": f"<image>\nq{k}", "chosen": f"right {k}", "rejected": f"wrong {k}", "answer_gt": str(k)}
    if image is not None:
        row["image"] = image
    return row


def write_mmpr_by_hand(folder, entries):
    """entries: {name: (meta entry without annotation, rows)} -> folder/meta.json + folder/ann/<name>.jsonl."""
    (folder / "ann").mkdir(parents=True)
    meta = {}
    for name, (entry, rows) in entries.items():
        (folder / "ann" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta[name] = {**entry, "annotation": f"ann/{name}.jsonl"}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


def test_read_internvl_layout_with_repeat_time(tmp_path):
    meta_path = write_mmpr_by_hand(
        tmp_path,
        {
            "geo": (
                {"root": "/data/geo", "repeat_time": 0.5, "max_dynamic_patch": 6, "length": 5},
                [pair(k, f"img/{k}.png") for k in range(5)],
            ),
            "chart": (
                {"root": "imgs", "repeat_time": 2, "data_augment": True},
                [pair(9, ["c1.png", "c2.png"])],
            ),
            "text": ({"root": ""}, [{"question": "q", "chosen": "a", "rejected": "b"}]),
        },
    )
    rows, datasets, summary = load_mmpr(meta_path)
    # repeat_time 0.5 on 5 lines keeps the first int(2.5) = 2 (InternVL takes the head); 2 doubles the list
    assert [r["chosen"] for r in rows] == ["right 0", "right 1", "right 9", "right 9", "a"]
    assert rows[0]["image"] == "/data/geo/img/0.png" and rows[0]["ds_name"] == "geo"
    assert rows[2]["image"] == [str(tmp_path / "imgs" / "c1.png"), str(tmp_path / "imgs" / "c2.png")]
    assert "image" not in rows[4]
    assert (summary.n_lines, summary.n_rows, summary.per_dataset) == (7, 5, {"geo": 2, "chart": 2, "text": 1})
    geo, chart, _ = datasets
    assert (geo.repeat_time, geo.max_dynamic_patch, geo.length) == (0.5, 6, 5)
    assert chart.data_augment is True and chart.max_dynamic_patch is None
    assert geo.annotation == str(tmp_path / "ann" / "geo.jsonl")  # relative to the meta file's folder

    only, _, _ = load_mmpr(meta_path, names=["chart"])
    assert [r["ds_name"] for r in only] == ["chart", "chart"]
    with pytest.raises(DataError, match=r"no entries named \['nope'\]"):
        load_mmpr(meta_path, names=["nope"])


def test_seeded_subsample_is_reproducible_and_keeps_file_order():
    rows = list(range(10))
    a = apply_repeat_time(rows, 0.3, random.Random(0))
    assert len(a) == 3 and a == sorted(a) and a == apply_repeat_time(rows, 0.3, random.Random(0))
    assert apply_repeat_time(rows, 0.3) == [0, 1, 2]
    assert any(apply_repeat_time(rows, 0.3, random.Random(s)) != a for s in range(1, 5))
    assert apply_repeat_time(rows, 3) == rows * 3


def test_load_with_a_seed_draws_a_subset_per_dataset_from_one_generator(tmp_path):
    lines = [pair(k) for k in range(10)]
    meta_path = write_mmpr_by_hand(
        tmp_path, {"a": ({"root": "", "repeat_time": 0.3}, lines), "b": ({"root": "", "repeat_time": 0.3}, lines)}
    )
    drawn = {}
    for seed in range(5):
        rows, _, summary = load_mmpr(meta_path, seed=seed)
        assert summary.per_dataset == {"a": 3, "b": 3}  # int(10 × 0.3) each
        drawn[seed] = [[r["chosen"] for r in rows if r["ds_name"] == name] for name in ("a", "b")]
        assert load_mmpr(meta_path, seed=seed)[0] == rows  # reproducible
    assert len({str(d) for d in drawn.values()}) > 1  # the seed decides the subset
    assert any(a != b for a, b in drawn.values())  # equal files, yet not the same draw: one generator, in turn


def test_round_trip(tmp_path):
    root = tmp_path / "images"
    rows = [
        {**pair(0, str(root / "a.png")), "chosen_meta": {"prompt_id": "p0"}, "rejected_meta": {"sample_index": 3}},
        pair(1, [str(root / "b.png"), str(root / "sub" / "c.png")]),
        {"question": "text only", "chosen": "x", "rejected": "y", "system_prompt": "be brief"},
        pair(3, "already/relative.png"),  # relative paths are taken as relative to root
    ]
    meta_path = write_mmpr(rows, tmp_path / "out", name="ours", root=root, max_dynamic_patch=12)
    written = [json.loads(line) for line in (tmp_path / "out" / "ours.jsonl").read_text().splitlines()]
    assert written[0]["image"] == "a.png" and written[1]["image"] == ["b.png", "sub/c.png"]
    meta = json.loads(meta_path.read_text())
    assert meta == {
        "ours": {
            "root": str(root),
            "annotation": "ours.jsonl",
            "data_augment": False,
            "max_dynamic_patch": 12,
            "repeat_time": 1,
            "length": 4,
        }
    }
    loaded, _, _ = load_mmpr(meta_path)
    expected = [{**r, "ds_name": "ours"} for r in rows]
    expected[3]["image"] = str(root / "already/relative.png")
    assert loaded == expected
    # writing the loaded rows again gives the same file (ds_name dropped, paths relative again)
    write_mmpr(loaded, tmp_path / "again", name="ours", root=root, max_dynamic_patch=12)
    assert (tmp_path / "again" / "ours.jsonl").read_text() == (tmp_path / "out" / "ours.jsonl").read_text()


def test_write_adds_entries_to_an_existing_meta(tmp_path):
    write_mmpr([pair(0)], tmp_path, name="first", root="/r")
    write_mmpr([pair(1)], tmp_path, name="second", root="/r", repeat_time=0.5)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert list(meta) == ["first", "second"] and meta["second"]["repeat_time"] == 0.5
    assert "max_dynamic_patch" not in meta["first"]


def test_image_outside_root_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"pair row 1: image '/elsewhere/a.png' is not under root="):
        write_mmpr([pair(0, "/elsewhere/a.png")], tmp_path, name="x", root=tmp_path / "images")


def test_bad_pair_row_names_file_line_or_is_skipped(tmp_path):
    bad = {"question": "q", "chosen": "a"}  # no rejected
    meta_path = write_mmpr_by_hand(tmp_path, {"d": ({"root": "/r"}, [pair(0), bad, pair(2)])})
    with pytest.raises(DataError, match=r"ann/d.jsonl line 2: no 'rejected' string; .*or set on_error=skip$"):
        load_mmpr(meta_path)
    rows, _, summary = load_mmpr(meta_path, on_error="skip")
    assert [r["chosen"] for r in rows] == ["right 0", "right 2"]
    assert dict(summary.skipped) == {"missing_rejected": 1}


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"annotation": "a.jsonl"}, "needs a string 'root'"),
        ({"root": "/r"}, "needs a string 'annotation'"),
        ({"root": "/r", "annotation": "missing.jsonl"}, "annotation 'missing.jsonl' not found"),
        ({"root": "/r", "annotation": "a.jsonl", "repeat_time": 1.5}, "repeat_time=1.5 must be in"),
        ({"root": "/r", "annotation": "a.jsonl", "repeat_time": "2"}, "repeat_time='2' must be a number"),
        (
            {"root": "/r", "annotation": "a.jsonl", "max_dynamic_patch": 0},
            "max_dynamic_patch=0 must be a whole number",
        ),
        (
            {"root": "/r", "annotation": "a.jsonl", "repeat_times": 2},
            r"unknown key\(s\) \['repeat_times'\]; valid keys: root, annotation, repeat_time, max_dynamic_patch, ",
        ),
        ("not an object", r"expected an object \{root, annotation, ...\}"),
    ],
)
def test_bad_meta_entries(tmp_path, entry, message):
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "meta.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(DataError, match=f"meta.json entry 'd': {message}"):
        read_mmpr_meta(tmp_path / "meta.json")


def test_missing_or_broken_meta_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"MMPR meta file .*nope.json not found; fix the path"):
        read_mmpr_meta(tmp_path / "nope.json")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta.json: not valid JSON .*; fix the meta file"):
        read_mmpr_meta(tmp_path / "meta.json")
