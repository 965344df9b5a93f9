"""build_pairs: InternVL's MMPR pair rules, case by case, on hand-built records.

The first tests pin the `strict` answer rule on short texts; the `internvl` rule (the default) follows below."""

import json

import pytest

from cascade_rl.data_tools.pairs import build_pairs, format_pairs_path, write_pairs


def strict(records, **kw):
    """(correctness pairs, summary) under the strict rule, asserting that no format pair came out."""
    pairs, format_pairs, summary = build_pairs(records, answer_rule="strict", **kw)
    assert format_pairs == []
    return pairs, summary


def texts(pairs):
    return [(p["chosen"], p["rejected"]) for p in pairs]


def test_cartesian_product_and_unparseable_rollouts_as_format_pairs(make_record):
    records = [
        make_record("p0", 0, "The answer is 4", correct=True),
        make_record("p0", 1, "The answer is 5"),
        make_record("p0", 2, "So 4", correct=True),
        make_record("p0", 3, "I cannot tell", parseable=False),
    ]
    pairs, format_pairs, summary = build_pairs(records, answer_rule="strict")
    # 2 positives x 1 negative, and 2 positives x 1 format negative (a file of its own); positives in sample order
    assert texts(pairs) == [("The answer is 4", "The answer is 5"), ("So 4", "The answer is 5")]
    assert texts(format_pairs) == [("The answer is 4", "I cannot tell"), ("So 4", "I cannot tell")]
    assert (summary.n_records, summary.n_positive, summary.n_negative, summary.n_format_negative) == (4, 2, 1, 1)
    assert (summary.n_keys, summary.n_pairs, summary.n_format_pairs) == (1, 2, 2)


def test_row_is_mmpr_form(make_record):
    records = [make_record("p0", 0, "4", correct=True, answer_pred="4"), make_record("p0", 1, "5", answer_pred="5")]
    (row,), _ = strict(records)
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
    pairs, _ = strict(multi + text)
    assert pairs[0]["image"] == ["a.png", "b.png"]
    assert pairs[0]["question"] == "Image-1: <image>\nImage-2: <image>\nq"
    assert "image" not in pairs[1] and pairs[1]["question"] == "q"


def test_substring_skip_on_text_is_case_insensitive(make_record):
    records = [
        make_record(text="Paris", correct=True),
        make_record(sample_index=1, text="PARIS or Lyon, I think Lyon"),  # contains "paris": ambiguous, skipped
        make_record(sample_index=2, text="Lyon"),
    ]
    pairs, summary = strict(records)
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
    pairs, summary = strict(records)
    assert texts(pairs) == [("so the answer is B", "so the answer is B... no wait, C")]
    assert summary.skipped_substring == 1


def test_key_whose_candidates_are_all_skipped_is_counted(make_record):
    records = [make_record(text="4", correct=True), make_record(sample_index=1, text="44")]
    pairs, summary = strict(records)
    assert pairs == [] and summary.keys_without_pairs == 1 and summary.skipped_substring == 1


def test_identical_pairs_are_kept_once(make_record):
    records = [
        make_record(text="yes it is A", correct=True),
        make_record(sample_index=1, text="yes it is A", correct=True),  # same text, another sample
        make_record(sample_index=2, text="B"),
        make_record(sample_index=3, text="C"),
    ]
    pairs, summary = strict(records)
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
    pairs, summary = strict(records)
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
    pairs, summary = strict(records)
    assert texts(pairs) == [("A", "B")]
    assert (summary.n_keys, summary.all_correct_keys, summary.all_wrong_keys) == (3, 1, 1)


def cap_records(make_record, order=1):
    pos = [make_record("p", i, f"right {i}", correct=True) for i in range(5)]
    neg = [make_record("p", 5 + j, f"wrong {j}") for j in range(4)]
    return (pos + neg)[::order]


def test_cap_keeps_max_distinct_candidates_reproducibly(make_record):
    pairs, summary = strict(cap_records(make_record), max_pairs_per_prompt=15, seed=0)
    all_candidates = {(f"right {i}", f"wrong {j}") for i in range(5) for j in range(4)}  # 20
    assert len(pairs) == 15 and len(set(texts(pairs))) == 15 and set(texts(pairs)) <= all_candidates
    assert summary.capped == 5
    again, _ = strict(cap_records(make_record), max_pairs_per_prompt=15, seed=0)
    assert again == pairs
    # record order does not matter (a resumed store reads records back in another order)
    reversed_order, _ = strict(cap_records(make_record, order=-1), max_pairs_per_prompt=15, seed=0)
    assert reversed_order == pairs
    other_seed, _ = strict(cap_records(make_record), max_pairs_per_prompt=15, seed=1)
    assert set(texts(other_seed)) != set(texts(pairs))


def test_cap_of_one(make_record):
    pairs, summary = strict(cap_records(make_record), max_pairs_per_prompt=1)
    assert len(pairs) == 1 and summary.capped == 19
    with pytest.raises(ValueError, match="max_pairs_per_prompt and max_format_pairs_per_prompt must be >= 1"):
        build_pairs([], max_format_pairs_per_prompt=0)
    with pytest.raises(ValueError, match="answer_rule must be one of internvl, strict, got 'lenient'"):
        build_pairs([], answer_rule="lenient")


def test_write_pairs_is_atomic(tmp_path, make_record):
    path = tmp_path / "pairs.jsonl"
    pairs, _ = strict([make_record(text="A", correct=True), make_record(sample_index=1, text="B")])
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


# ---- the internvl answer rule (InternVL's en_v2: utils/accuracy_reward.py, ..._correctness_postprocess.py) ----


def boxed(answer):
    """A well-formed response of more than 20 characters whose answer is `answer`."""
    return f"Counting the shapes one by one gives \\boxed{{{answer}}}"


def test_a_response_of_20_characters_or_fewer_is_a_format_negative_even_when_correct(make_record):
    fifteen = "I see 4 shapes."
    assert len(fifteen) == 15 and len("Answer: \\boxed{4} ok") == 20 and len("Answer: \\boxed{4} ok!") == 21
    records = [
        make_record(text=boxed(4), correct=True),
        make_record(sample_index=1, text=fifteen),
        make_record(sample_index=2, text="Answer: \\boxed{4} ok", correct=True),  # 20 characters: format negative
        make_record(sample_index=3, text="Answer: \\boxed{5} ok!"),  # 21 characters: an ordinary negative
    ]
    pairs, format_pairs, summary = build_pairs(records)
    assert texts(pairs) == [(boxed(4), "Answer: \\boxed{5} ok!")]
    assert texts(format_pairs) == [(boxed(4), fifteen), (boxed(4), "Answer: \\boxed{4} ok")]
    assert (summary.n_positive, summary.n_negative, summary.n_format_negative) == (1, 1, 2)
    assert (
        format_pairs[0]["rejected_meta"]["parseable"] is False
        and format_pairs[0]["rejected_meta"]["answer_pred"] is None
    )


def test_a_pair_whose_chosen_answer_appears_in_the_rejected_answer_is_dropped(make_record):
    unboxed = "I think there are 4 or maybe 5 of them"  # no box: the whole response is its answer, and holds "4"
    truncated = "Let me count them: 1, 2, 3, 4, 5, and th"  # cut off by max_new_tokens: the same
    records = [
        make_record(text=boxed(4), correct=True),
        make_record(sample_index=1, text=boxed(14)),  # "4" in "14": dropped, as InternVL does
        make_record(sample_index=2, text=unboxed),
        make_record(sample_index=3, text=truncated, finish_reason="length"),
        make_record(sample_index=4, text=boxed(5)),  # kept
        make_record(sample_index=5, text="I think there are five of them"),  # whole-text answer without "4": kept
    ]
    pairs, format_pairs, summary = build_pairs(records)
    assert texts(pairs) == [(boxed(4), boxed(5)), (boxed(4), "I think there are five of them")]
    assert format_pairs == [] and summary.skipped_substring == 3
    # The strict rule reads no answer off the unboxed and truncated ones: format negatives, compared by full text.
    pairs, format_pairs, summary = build_pairs(
        [r if r.sample_index in (0, 1, 4) else _unparsed(r) for r in records], answer_rule="strict"
    )
    assert texts(format_pairs) == [(boxed(4), unboxed), (boxed(4), truncated), (boxed(4), records[5].text)]


def _unparsed(record):
    record.parseable = False
    return record


def test_the_answer_is_the_last_balanced_box_else_the_whole_response(make_record):
    half = "We divide 1 by 2, which gives \\boxed{\\frac{1}{2}}"
    # A broken last box: the answer is the whole text (not the earlier "7"), which holds "\frac{1}{2}"
    broken = "First \\boxed{7}, but it is \\frac{1}{2} after all: \\boxed{\\frac{1}{2"
    records = [
        make_record(text=half, correct=True, answer_pred="scorer's answer is ignored"),
        make_record(sample_index=1, text=broken, parseable=False),  # the record's parseable is ignored too
        make_record(sample_index=2, text="Then again it is \\boxed{\\frac{2}{3}}"),
    ]
    pairs, _, summary = build_pairs(records)
    assert texts(pairs) == [(half, "Then again it is \\boxed{\\frac{2}{3}}")] and summary.skipped_substring == 1
    assert pairs[0]["chosen_meta"]["answer_pred"] == "\\frac{1}{2}"
    assert pairs[0]["rejected_meta"]["answer_pred"] == "\\frac{2}{3}"


def test_format_pairs_have_their_own_cap_and_seeded_sample(make_record):
    pos = [make_record("p", i, boxed(4) + "!" * i, correct=True) for i in range(4)]
    neg = [make_record("p", 10 + j, boxed(j + 5)) for j in range(2)]
    fmt = [make_record("p", 20 + k, "x" * (k + 1)) for k in range(5)]  # 1 to 5 characters
    pairs, format_pairs, summary = build_pairs(pos + neg + fmt, max_pairs_per_prompt=3, max_format_pairs_per_prompt=15)
    assert len(pairs) == 3 and summary.capped == 4 + 1  # 4 x 2 = 8 candidates, 3 kept
    assert len(format_pairs) == 15 and summary.format_capped == 20 - 15  # 4 x 5 = 20 candidates
    candidates = {(p.text, f.text) for p in pos for f in fmt}
    assert len(set(texts(format_pairs))) == 15 and set(texts(format_pairs)) <= candidates
    again = build_pairs(list(reversed(pos + neg + fmt)), max_pairs_per_prompt=3, max_format_pairs_per_prompt=15)
    assert (again.pairs, again.format_pairs) == (pairs, format_pairs)
    only_one_format_pair = build_pairs(pos + neg + fmt, max_pairs_per_prompt=3, max_format_pairs_per_prompt=1)
    assert only_one_format_pair.pairs == pairs and len(only_one_format_pair.format_pairs) == 1


def test_format_pairs_path_sits_beside_the_pairs_file(tmp_path):
    assert format_pairs_path(tmp_path / "pairs.jsonl") == tmp_path / "pairs_format_rules.jsonl"
    assert format_pairs_path("out/mmpr") == format_pairs_path("out/mmpr.jsonl")
