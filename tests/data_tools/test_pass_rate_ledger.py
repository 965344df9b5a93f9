"""PassRateLedger: per-prompt math, merge weighted by n, save/load in both forms; filter_by_pass_rate."""

import json

import pytest

from cascade_rl.data import DataError, prompt_id_for
from cascade_rl.data_tools.filter import filter_by_pass_rate, select_prompt_rows
from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.data_tools.store import RolloutStore


def four_samples(make_record):
    # rewards 1, 0, 0.5, 1 ; correct T F F T ; lengths 3, 5, 10, 2 ; two hit max_new_tokens
    return [
        make_record("p", 0, correct=True, reward=1.0, n_tokens=3),
        make_record("p", 1, reward=0.0, n_tokens=5, finish_reason="length"),
        make_record("p", 2, reward=0.5, n_tokens=10, finish_reason="length"),
        make_record("p", 3, correct=True, reward=1.0, n_tokens=2),
    ]


def test_per_prompt_math(make_record):
    ledger = PassRateLedger.from_records(four_samples(make_record))
    s = ledger["p"]
    assert (s.n, s.n_correct, s.truncations) == (4, 2, 2)
    assert s.pass_rate == 0.5  # 2 / 4
    assert s.mean_reward == 0.625  # (1 + 0 + 0.5 + 1) / 4
    assert s.mean_length == 5.0  # (3 + 5 + 10 + 2) / 4
    assert ledger.pass_rate("p") == 0.5
    assert len(ledger) == 1 and "p" in ledger and "q" not in ledger


def test_merge_sums_counts_and_weights_means_by_n(make_record):
    a = PassRateLedger.from_records(four_samples(make_record) + [make_record("only_a", 0)])
    b = PassRateLedger.from_records(
        [make_record("p", 4, correct=True, reward=0.0, n_tokens=10), make_record("only_b", 0, correct=True)]
    )
    merged = a.merge(b)
    s = merged["p"]
    assert (s.n, s.n_correct, s.truncations) == (5, 3, 2)
    assert s.pass_rate == 0.6  # 3 / 5
    assert s.mean_reward == 0.5  # (0.625 * 4 + 0.0 * 1) / 5
    assert s.mean_length == 6.0  # (5 * 4 + 10 * 1) / 5
    assert list(merged) == ["p", "only_a", "only_b"]
    assert a["p"].n == 4 and b["p"].n == 1  # the inputs are untouched


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_save_load_round_trip(tmp_path, make_record, suffix):
    ledger = PassRateLedger.from_records(four_samples(make_record) + [make_record("q", 0, n_tokens=7)])
    path = ledger.save(tmp_path / f"ledger{suffix}")
    loaded = PassRateLedger.load(path)
    assert list(loaded) == ["p", "q"]
    for pid in ledger:
        assert loaded[pid].to_dict() == ledger[pid].to_dict()
    text = path.read_text()
    assert '"pass_rate": 0.5' in text and '"mean_length": 7.0' in text


def test_load_names_the_bad_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    good = {"prompt_id": "p", "n": 2, "n_correct": 1, "mean_reward": 0.5, "mean_length": 3, "truncations": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "n_correct": 3}) + "\n")
    with pytest.raises(DataError, match=r"ledger.jsonl line 2: counts out of range \(n=2, n_correct=3"):
        PassRateLedger.load(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "n"}) + "\n")
    with pytest.raises(DataError, match=r"ledger.jsonl line 1: bad ledger entry \(KeyError: 'n'\)"):
        PassRateLedger.load(path)
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(DataError, match="not a pass-rate ledger"):
        PassRateLedger.load(other)


def test_ledger_from_a_store_counts_a_rewritten_sample_once(tmp_path, make_record):
    with RolloutStore(tmp_path) as store:
        store.append(four_samples(make_record))
        store.append([make_record("p", 1, correct=True, reward=1.0, n_tokens=5)])  # sample 1 regenerated
        ledger = PassRateLedger.from_records(store)
    assert (ledger["p"].n, ledger["p"].n_correct, ledger["p"].truncations) == (4, 3, 1)


def ledger_with_rates(make_record, correct_counts, n=5):
    records = []
    for k, n_correct in enumerate(correct_counts):
        records += [make_record(f"p{k}", i, correct=i < n_correct) for i in range(n)]
    return PassRateLedger.from_records(records)


def test_filter_bounds_are_inclusive(make_record):
    # 5 samples each: pass rates 0.0, 0.2, 0.4, 0.6, 0.8, 1.0
    ledger = ledger_with_rates(make_record, [0, 1, 2, 3, 4, 5])
    assert filter_by_pass_rate(ledger) == ["p1", "p2", "p3", "p4"]
    assert filter_by_pass_rate(ledger, low=0.3, high=0.7) == ["p2", "p3"]
    assert filter_by_pass_rate(ledger, low=0.0, high=1.0) == [f"p{k}" for k in range(6)]
    assert filter_by_pass_rate(ledger, min_samples=6) == []
    with pytest.raises(ValueError, match="need 0 <= low <= high <= 1"):
        filter_by_pass_rate(ledger, low=0.8, high=0.2)


def test_select_prompt_rows_keeps_columns_and_order(tmp_path):
    rows = [
        {"id": "p0", "question": "a", "answer": "1", "bbox": [1, 2, 3, 4]},
        {"id": "p1", "question": "b", "answer": "2"},
        {"question": "no id", "image": "x.png", "answer": "3"},
        {"id": "p3", "question": "", "answer": "4"},  # unreadable: empty question
    ]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hashed = prompt_id_for(["x.png"], "no id")
    summary = select_prompt_rows(src, [hashed, "p0", "ghost"], tmp_path / "online.jsonl")
    out = [json.loads(line) for line in (tmp_path / "online.jsonl").read_text().splitlines()]
    assert out == [rows[0], rows[2]]
    assert (summary.n_rows, summary.n_selected, summary.n_unreadable, summary.missing_ids) == (4, 2, 1, ["ghost"])
