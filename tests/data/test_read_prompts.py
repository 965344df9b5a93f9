"""read_prompts: every kind of bad row is named by file:line with a fix, or skipped and counted."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cascade_rl.data import DataError, prompt_id_for, read_prompts


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a.png")
    Image.new("RGB", (8, 8), (40, 50, 60)).save(root / "b.png")
    (root / "junk.png").write_bytes(b"this is not an image")
    return root


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [
    {"id": "q1", "question": "What colour?", "image": "a.png", "answer": "blue", "data_source": "demo"},
    {"question": "<image>\n<image>\nCompare.", "images": ["a.png", {"path": "b.png"}], "answer": "same"},
    {"question": "2+2?", "answer": 4},
]


def test_good_rows(tmp_path, image_root):
    path = write_jsonl(tmp_path / "prompts.jsonl", [GOOD[0], "", GOOD[1], GOOD[2]])
    rows, summary = read_prompts(path, image_root, require_answer=True)
    assert [r.id for r in rows] == ["q1", prompt_id_for(["a.png", "b.png"], GOOD[1]["question"]), rows[2].id]
    assert rows[0].images == ["a.png"] and rows[0].answer == "blue" and rows[0].extra == {"data_source": "demo"}
    assert rows[1].images == ["a.png", "b.png"]
    assert rows[2].images == [] and rows[2].answer == 4
    # the blank line 2 is skipped but still counted in line numbers
    assert [r.source for r in rows] == [f"{path} line 1", f"{path} line 3", f"{path} line 4"]
    assert (summary.n_rows, summary.n_kept, summary.n_skipped) == (3, 3, 0)


BAD_CASES = [
    (
        {"question": "q", "image": "nope.png", "answer": "1"},
        "missing_image",
        "image 'nope.png' not found under image_root=",
    ),
    ({"question": "q", "image": "junk.png", "answer": "1"}, "unreadable_image", "image 'junk.png' under image_root="),
    ({"question": "   ", "image": "a.png"}, "empty_question", "empty question; write the question or drop the row"),
    ({"image": "a.png"}, "missing_question", "no 'question' text"),
    ({"question": "q", "image": "a.png"}, "missing_answer", "no 'answer' (ground truth)"),
    ({"question": "<image> <image> q", "image": "a.png"}, "placeholder_mismatch", "2 <image> placeholders but"),
    ('{"question": "q", ', "bad_json", "not valid JSON"),
    ({"id": "q1", "question": "again", "answer": "x"}, "duplicate_id", "duplicate prompt id 'q1' (first at"),
]


@pytest.mark.parametrize("bad,reason,message", BAD_CASES, ids=[c[1] for c in BAD_CASES])
def test_bad_row_raises_naming_file_line_and_fix(tmp_path, image_root, bad, reason, message):
    path = write_jsonl(tmp_path / "prompts.jsonl", [GOOD[0], GOOD[2], bad])
    with pytest.raises(DataError) as e:
        read_prompts(path, image_root, require_answer=True)
    assert str(e.value).startswith(f"{path} line 3: ")
    assert message in str(e.value)
    assert str(e.value).endswith(", or set on_error=skip")
    assert e.value.reason == reason


def test_skip_mode_drops_and_counts_each_bad_row(tmp_path, image_root):
    lines = [GOOD[0]] + [bad for bad, _, _ in BAD_CASES] + [GOOD[2]]
    path = write_jsonl(tmp_path / "prompts.jsonl", lines)
    rows, summary = read_prompts(path, image_root, require_answer=True, on_error="skip")
    assert [r.source for r in rows] == [f"{path} line 1", f"{path} line {len(lines)}"]
    assert summary.n_rows == len(lines) and summary.n_kept == 2 and summary.n_skipped == len(BAD_CASES)
    assert dict(summary.skipped) == {reason: 1 for _, reason, _ in BAD_CASES}
    assert summary.examples[0].startswith(f"{path} line 2: image 'nope.png' not found")
    assert f"2/{len(lines)} rows kept" in str(summary)


def test_answer_is_optional_unless_required_and_images_can_be_unchecked(tmp_path, image_root):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "image": "nope.png"}])
    rows, _ = read_prompts(path, image_root, check_images=False)
    assert rows[0].answer is None and rows[0].images == ["nope.png"]


def test_json_list_and_parquet_read_like_jsonl(tmp_path, image_root):
    jsonl_rows, _ = read_prompts(write_jsonl(tmp_path / "p.jsonl", GOOD), image_root)
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps(GOOD))
    json_rows, _ = read_prompts(json_path, image_root)
    parquet_path = tmp_path / "p.parquet"
    plain = [{"id": "q1", "question": "What colour?", "image": "a.png", "answer": "blue"}, GOOD[2] | {"id": "q3"}]
    pq.write_table(pa.Table.from_pylist([{**r, "answer": str(r["answer"])} for r in plain]), parquet_path)
    parquet_rows, _ = read_prompts(parquet_path, image_root)
    assert json_rows == jsonl_rows
    assert json_rows[1].source == f"{json_path} item 2"
    assert [(r.id, r.images, r.answer) for r in parquet_rows] == [("q1", ["a.png"], "blue"), ("q3", [], "4")]
    assert parquet_rows[1].source == f"{parquet_path} row 2"


def test_verl_mmpr_tiny_layout(tmp_path, image_root):
    record = {
        "data_source": "geo3k",
        "images": [{"path": "a.png"}],
        "extra_info": {"question": "<image>Find x.", "index": 3},
        "reward_model": {"ground_truth": "12", "style": "rule"},
    }
    rows, _ = read_prompts(write_jsonl(tmp_path / "p.jsonl", [record]), image_root, require_answer=True)
    assert (rows[0].question, rows[0].images, rows[0].answer) == ("<image>Find x.", ["a.png"], "12")
    assert rows[0].extra["data_source"] == "geo3k"


def test_unknown_file_type(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question\nq\n")
    with pytest.raises(DataError, match="unknown prompt file type '.csv'; use .jsonl, .json or .parquet"):
        read_prompts(path)


def test_broken_json_list_names_the_place(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"question": "q"},\n {"question": }]')
    with pytest.raises(
        DataError, match=r"p.json: not valid JSON \(Expecting value at line 2 column 15\); fix the file"
    ):
        read_prompts(path)


def test_an_empty_file_is_refused_by_name(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: no prompt rows in the file.*refuses to run on nothing"):
        read_prompts(path)


def test_a_file_whose_rows_were_all_skipped_is_refused_with_the_reasons(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "   "}\n{"question": "  "}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: all 2 rows were skipped by on_error=skip \(2 empty_question\)"):
        read_prompts(path, on_error="skip")
