"""RolloutStore: durable batches, torn-line repair, resume, last-write-wins, and a SIGKILL test."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cascade_rl.data import DataError
from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.data_tools.store import RolloutStore

CHILD = Path(__file__).with_name("store_writer_child.py")


def batch(make_record, prompt_id, n, **kw):
    return [make_record(prompt_id, i, f"{prompt_id}-{i}", **kw) for i in range(n)]


def test_append_and_read_back(tmp_path, make_record):
    records = batch(make_record, "p0", 3) + batch(make_record, "p1", 2, correct=True)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "ledger.jsonl").write_text('{"prompt_id": "not a shard"}\n')  # ignored
    with RolloutStore(tmp_path / "store") as store:
        assert store.append(records[:3]) == 3
        assert store.append(records[3:]) == 2
        assert store.append([]) == 0
        assert list(store) == records
        assert len(store) == 5
    (shard,) = RolloutStore(tmp_path / "store", readonly=True).shards()
    assert shard.name == "rollouts-00000.jsonl"
    first = json.loads(shard.read_text().splitlines()[0])
    assert list(first)[:2] == ["prompt_id", "sample_index"]  # key fields first: keys are read without parsing
    assert RolloutRecord.from_dict(first) == records[0]


def test_each_batch_is_fsynced(tmp_path, make_record, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with RolloutStore(tmp_path) as store:
        before = len(synced)
        store.append(batch(make_record, "p0", 2))
        store.append(batch(make_record, "p1", 2))
        shard_fd = store._file.fileno()
    assert synced[before:].count(shard_fd) == 2


def test_done_prompt_ids_needs_all_n_samples(tmp_path, make_record):
    with RolloutStore(tmp_path) as store:
        store.append(batch(make_record, "full", 4))
        store.append([make_record("partial", 0), make_record("partial", 2)])
        assert store.done_prompt_ids(4) == {"full"}
        assert store.done_prompt_ids(5) == set()
        assert store.done_prompt_ids(1) == {"full", "partial"}
        assert store.sample_indices() == {"full": {0, 1, 2, 3}, "partial": {0, 2}}


def test_torn_last_line_is_dropped_on_open(tmp_path, make_record):
    records = batch(make_record, "p0", 2) + batch(make_record, "p1", 2)
    with RolloutStore(tmp_path) as store:
        store.append(records[:2])
        store.append(records[2:])
    shard = tmp_path / "rollouts-00000.jsonl"
    intact = shard.read_bytes()
    with open(shard, "ab") as f:  # a crash in the middle of the third batch's write
        f.write(b'{"prompt_id": "p2", "sample_index": 0, "text": "half wri')
    # a reader skips the torn tail and leaves the file alone
    assert list(RolloutStore(tmp_path, readonly=True)) == records
    assert shard.read_bytes() != intact
    with RolloutStore(tmp_path) as store:
        assert shard.read_bytes() == intact
        assert len(store.repairs) == 1 and "dropped a torn last line" in store.repairs[0]
        store.append(batch(make_record, "p2", 1))
        assert [r.prompt_id for r in store] == ["p0", "p0", "p1", "p1", "p2"]
    assert [p.name for p in RolloutStore(tmp_path, readonly=True).shards()] == [
        "rollouts-00000.jsonl",
        "rollouts-00001.jsonl",  # each writer session starts a new shard
    ]


def test_garbled_complete_last_line_is_dropped_too(tmp_path, make_record):
    with RolloutStore(tmp_path) as store:
        store.append(batch(make_record, "p0", 2))
    shard = tmp_path / "rollouts-00000.jsonl"
    intact = shard.read_bytes()
    with open(shard, "ab") as f:
        f.write(b"\x00\x00\x00garbage\n")
    with RolloutStore(tmp_path) as store:
        assert shard.read_bytes() == intact and len(store.repairs) == 1


def test_corrupt_line_inside_a_shard_is_named(tmp_path, make_record):
    with RolloutStore(tmp_path) as store:
        store.append(batch(make_record, "p0", 1))
    shard = tmp_path / "rollouts-00000.jsonl"
    shard.write_bytes(b"not json\n" + shard.read_bytes())
    with pytest.raises(DataError, match=r"rollouts-00000.jsonl line 1: corrupt record .*delete this line"):
        list(RolloutStore(tmp_path, readonly=True))


def test_a_rewritten_sample_is_read_once_last_write_winning(tmp_path, make_record):
    with RolloutStore(tmp_path) as store:
        store.append([make_record("p0", 0, "old"), make_record("p0", 1, "kept")])
        store.append([make_record("p0", 0, "new")])
        assert [(r.sample_index, r.text) for r in store] == [(1, "kept"), (0, "new")]
        assert len(store) == 2


def test_shards_rotate_past_max_bytes(tmp_path, make_record):
    with RolloutStore(tmp_path, max_shard_bytes=1) as store:
        for k in range(3):
            store.append(batch(make_record, f"p{k}", 2))
        assert len(store.shards()) == 3  # a shard never splits a batch, however small the limit
        assert [r.prompt_id for r in store] == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_one_writer_per_prefix(tmp_path, make_record):
    with RolloutStore(tmp_path):
        with pytest.raises(DataError, match="another process is writing shards 'rollouts-\\*'"):
            RolloutStore(tmp_path)
        with RolloutStore(tmp_path, shard_prefix="rank1") as other:  # another rank, another prefix: fine
            other.append(batch(make_record, "r1", 1))
    with RolloutStore(tmp_path) as again:  # the lock went with the first writer
        assert [r.prompt_id for r in again] == ["r1"]


def test_readonly_needs_an_existing_store(tmp_path):
    with pytest.raises(DataError, match="no rollout store at .*; run the rollout stage first"):
        RolloutStore(tmp_path / "missing", readonly=True)


def test_append_checks_dict_records(tmp_path):
    with RolloutStore(tmp_path) as store, pytest.raises(DataError, match=r"missing \['text'"):
        store.append([{"prompt_id": "p", "sample_index": 0}])


def run_child(store_dir, hang_after=0):
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(store_dir), "30", "4", str(hang_after)], stdout=subprocess.PIPE, text=True
    )


def stored(store_dir):
    return sorted(
        (r.to_dict() for r in RolloutStore(store_dir, readonly=True)),
        key=lambda d: (d["prompt_id"], d["sample_index"]),
    )


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path):
    reference = run_child(tmp_path / "reference")
    assert reference.wait(timeout=60) == 0

    victim = run_child(tmp_path / "killed", hang_after=3)
    # appends alternate: 1st half (prompt A + first sample of B), 2nd half (rest of B, C). After append 3 the
    # store holds batch 1 and a half-written batch 2; the child then hangs, and we kill it there.
    for line in victim.stdout:
        if line.strip() == "appended 3":
            victim.send_signal(signal.SIGKILL)
            break
    assert victim.wait(timeout=60) == -signal.SIGKILL
    victim.stdout.close()
    indices = RolloutStore(tmp_path / "killed", readonly=True).sample_indices()
    assert {len(v) for v in indices.values()} == {4, 1}  # p003 has only sample 0: a prompt cut in half
    assert len(RolloutStore(tmp_path / "killed", readonly=True).done_prompt_ids(4)) == 4

    rerun = run_child(tmp_path / "killed")
    assert rerun.wait(timeout=60) == 0
    rerun.stdout.close()
    reference.stdout.close()
    final = RolloutStore(tmp_path / "killed", readonly=True)
    assert final.done_prompt_ids(4) == {f"p{k:03d}" for k in range(30)}
    assert len(final) == 120
    assert stored(tmp_path / "killed") == stored(tmp_path / "reference")
