"""build_pairs: InternVL's MMPR pair rules, case by case, on hand-built records."""

import json

import pytest

from cascade_rl.data_tools.pairs import build_pairs, write_pairs


def texts(pairs):
    return [(p["chosen"], p["rejected"]) for p in pairs]


def test_cartesian_product_with_unparseable_as_negative(make_record):
    records = [
        make_record("p0", 0, "The answer is 4", correct=True),
        make_record("p0", 1, "The answer is 5"),
        make_record("p0", 2, "So 4", correct=True),
        make_record("p0", 3, "I cannot tell", parseable=False),
    ]
    pairs, summary = build_pairs(records)
    # 2 positives x 2 negatives; positives in sample order, then negatives in sample order
    assert texts(pairs) == [
        ("The answer is 4", "The answer is 5"),
        ("The answer is 4", "I cannot tell"),
        ("So 4", "The answer is 5"),
        ("So 4", "I cannot tell"),
    ]
    assert (summary.n_records, summary.n_positive, summary.n_negative, summary.n_unparseable) == (4, 2, 2, 1)
    assert (summary.n_keys, summary.n_pairs) == (1, 4)


def test_row_is_mmpr_form(make_record):
    records = [make_record("p0", 0, "4", correct=True, answer_pred="4"), make_record("p0", 1, "5", answer_pred="5")]
    (row,), _ = build_pairs(records)
    assert row == {
        "image": "a.png",
        "question": "<image>\nq",  # placeholder prepended for the single image
        "chosen": "4",
        "rejected": "5",
        "answer_gt": "A",
        "chosen_meta": {
            "prompt_id": "p0",
            "sample_index": 0,
            "reward": 1.0,
            "rewards": {},
            "correct": True,
            "parseable": True,
            "answer_pred": "4",
            "finish_reason": "stop",
        },
        "rejected_meta": {
            "prompt_id": "p0",
            "sample_index": 1,
            "reward": 0.0,
            "rewards": {},
            "correct": False,
            "parseable": True,
            "answer_pred": "5",
            "finish_reason": "stop",
        },
    }


def test_multi_image_and_text_only_rows(make_record):
    multi = [
        make_record("m", 0, "yes", correct=True, images=["a.png", "b.png"]),
        make_record("m", 1, "no", images=["a.png", "b.png"]),
    ]
    text = [make_record("t", 0, "yes", correct=True, images=[]), make_record("t", 1, "no", images=[])]
    pairs, _ = build_pairs(multi + text)
    assert pairs[0]["image"] == ["a.png", "b.png"]
    assert pairs[0]["question"] == "Image-1: <image>\nImage-2: <image>\nq"
    assert "image" not in pairs[1] and pairs[1]["question"] == "q"


def test_substring_skip_on_text_is_case_insensitive(make_record):
    records = [
        make_record(text="Paris", correct=True),
        make_record(sample_index=1, text="PARIS or Lyon, I think Lyon"),  # contains "paris": ambiguous, skipped
        make_record(sample_index=2, text="Lyon"),
    ]
    pairs, summary = build_pairs(records)
    assert texts(pairs) == [("Paris", "Lyon")]
    assert summary.skipped_substring == 1


def test_substring_skip_uses_parsed_answers_when_both_have_them(make_record):
    records = [
        make_record(text="so the answer is B", correct=True, answer_pred="B"),
        # texts differ, parsed answers "B" in "b) 3": skipped, as InternVL compares answer_pred
        make_record(sample_index=1, text="I pick option b", answer_pred="b) 3"),
        # the chosen *text* is inside this one, but the parsed answers differ: kept
        make_record(sample_index=2, text="so the answer is B... no wait, C", answer_pred="C"),
    ]
    pairs, summary = build_pairs(records)
    assert texts(pairs) == [("so the answer is B", "so the answer is B... no wait, C")]
    assert summary.skipped_substring == 1


def test_key_whose_candidates_are_all_skipped_is_counted(make_record):
    records = [make_record(text="4", correct=True), make_record(sample_index=1, text="44")]
    pairs, summary = build_pairs(records)
    assert pairs == [] and summary.keys_without_pairs == 1 and summary.skipped_substring == 1


def test_identical_pairs_are_kept_once(make_record):
    records = [
        make_record(text="yes it is A", correct=True),
        make_record(sample_index=1, text="yes it is A", correct=True),  # same text, another sample
        make_record(sample_index=2, text="B"),
        make_record(sample_index=3, text="C"),
    ]
    pairs, summary = build_pairs(records)
    assert texts(pairs) == [("yes it is A", "B"), ("yes it is A", "C")]
    assert summary.duplicates == 2


def test_all_correct_and_all_wrong_keys_give_no_pairs_and_are_counted(make_record):
    records = [
        make_record("right", 0, "A!", correct=True, question="easy"),
        make_record("right", 1, "A!!", correct=True, question="easy"),
        make_record("wrong", 0, "B", question="hard"),
        make_record("wrong", 1, "junk", parseable=False, question="hard"),
        make_record("mixed", 0, "A", correct=True, question="mid"),
        make_record("mixed", 1, "B", question="mid"),
    ]
    pairs, summary = build_pairs(records)
    assert texts(pairs) == [("A", "B")]
    assert (summary.n_keys, summary.all_correct_keys, summary.all_wrong_keys) == (3, 1, 1)


def test_key_is_images_question_answer(make_record):
    # the same question on another image, or with another ground truth, is another key; two prompt ids
    # with the same (images, question, answer) share a key, as in InternVL
    records = [
        make_record("p1", 0, "A", correct=True),
        make_record("p2", 0, "B"),  # same key as p1
        make_record("p3", 0, "A", correct=True, images=["other.png"]),
        make_record("p4", 0, "B", answer="other"),
    ]
    pairs, summary = build_pairs(records)
    assert texts(pairs) == [("A", "B")]
    assert (summary.n_keys, summary.all_correct_keys, summary.all_wrong_keys) == (3, 1, 1)


def cap_records(make_record, order=1):
    pos = [make_record("p", i, f"right {i}", correct=True) for i in range(5)]
    neg = [make_record("p", 5 + j, f"wrong {j}") for j in range(4)]
    return (pos + neg)[::order]


def test_cap_keeps_max_distinct_candidates_reproducibly(make_record):
    pairs, summary = build_pairs(cap_records(make_record), max_pairs_per_prompt=15, seed=0)
    all_candidates = {(f"right {i}", f"wrong {j}") for i in range(5) for j in range(4)}  # 20
    assert len(pairs) == 15 and len(set(texts(pairs))) == 15 and set(texts(pairs)) <= all_candidates
    assert summary.capped == 5
    again, _ = build_pairs(cap_records(make_record), max_pairs_per_prompt=15, seed=0)
    assert again == pairs
    # record order does not matter (a resumed store reads records back in another order)
    reversed_order, _ = build_pairs(cap_records(make_record, order=-1), max_pairs_per_prompt=15, seed=0)
    assert reversed_order == pairs
    other_seed, _ = build_pairs(cap_records(make_record), max_pairs_per_prompt=15, seed=1)
    assert set(texts(other_seed)) != set(texts(pairs))


def test_cap_of_one(make_record):
    pairs, summary = build_pairs(cap_records(make_record), max_pairs_per_prompt=1)
    assert len(pairs) == 1 and summary.capped == 19
    with pytest.raises(ValueError, match="max_pairs_per_prompt must be >= 1"):
        build_pairs([], max_pairs_per_prompt=0)


def test_write_pairs_is_atomic(tmp_path, make_record):
    path = tmp_path / "pairs.jsonl"
    pairs, _ = build_pairs([make_record(text="A", correct=True), make_record(sample_index=1, text="B")])
    write_pairs(path, pairs)
    assert [json.loads(line) for line in path.read_text().splitlines()] == pairs

    def failing_rows():
        yield {"chosen": "new"}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_pairs(path, failing_rows())
    # the old file is intact and no temp file is left behind
    assert [json.loads(line) for line in path.read_text().splitlines()] == pairs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]
