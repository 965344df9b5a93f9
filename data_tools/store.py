"""RolloutStore: a crash-safe, append-only store of scored rollouts, keyed by (prompt_id, sample_index).

Layout: `<dir>/<prefix>-00000.jsonl`, `<prefix>-00001.jsonl`, ... one RolloutRecord per line (see records.py).
Each writer session starts a new shard (and rotates past `max_shard_bytes`), so an old shard is never
appended to again. Guarantees:
- `append(batch)` writes the batch as whole lines with one write, then flushes and fsyncs: a crash loses at
  most the batch in flight, and earlier batches are on disk.
- Opening for writing drops a torn last line (a line with no newline, or a last line that is not JSON) by
  truncating the shard to its last complete line. Readers skip a torn tail without touching the file.
- A record appended twice (a prompt regenerated after a crash) is read once: the last write wins.
- `done_prompt_ids(n)` names prompts with all samples 0..n-1 stored, so a rerun of the same command skips them.
One writer per (dir, prefix) at a time, enforced with a lock file; give each rank its own prefix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cascade_rl.data.errors import DataError
from cascade_rl.data.io import fsync_dir
from cascade_rl.data_tools.records import RolloutRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None

logger = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"[A-Za-z0-9_.]+-\d+\.jsonl")
_KEY_PREFIX = re.compile(rb'^\{"prompt_id": ("(?:[^"\\]|\\.)*"), "sample_index": (\d+)')
_CHUNK = 1 << 16


class RolloutStore:
    """Append-only jsonl shards of RolloutRecords in `directory` (created if missing unless `readonly`)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        shard_prefix: str = "rollouts",
        readonly: bool = False,
        max_shard_bytes: int = 256 << 20,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", shard_prefix):
            raise ValueError(f"shard_prefix must be letters, digits, '_' or '.', got {shard_prefix!r}")
        self.dir = Path(directory)
        self.prefix = shard_prefix
        self.readonly = readonly
        self.max_shard_bytes = max_shard_bytes
        self.repairs: list[str] = []  # one message per torn line dropped on open
        self._file: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None
        if readonly:
            if not self.dir.is_dir():
                raise DataError(f"no rollout store at {self.dir}; run the rollout stage first", reason="no_store")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        for shard in self._own_shards():
            dropped = _drop_torn_tail(shard)
            if dropped:
                self.repairs.append(
                    f"{shard}: dropped a torn last line ({dropped} bytes) left by an interrupted write"
                )
                logger.warning(self.repairs[-1])

    # ---- writing -------------------------------------------------------------------------------------------
    def append(self, records: Iterable[RolloutRecord | dict[str, Any]]) -> int:
        """Write one batch durably (whole lines, one write, flush, fsync); returns the number of records written."""
        if self.readonly:
            raise RuntimeError(f"RolloutStore({self.dir}) was opened readonly")
        lines = []
        for record in records:
            if isinstance(record, dict):
                record = RolloutRecord.from_dict(record, source="append()")
            lines.append(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        f = self._writable(len(data))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return len(lines)

    def _writable(self, nbytes: int) -> IO[bytes]:
        if self._file is not None and 0 < self._file.tell() and self._file.tell() + nbytes > self.max_shard_bytes:
            self._file.close()
            self._file = None
        if self._file is None:
            indices = [_shard_index(p) for p in self._own_shards()]
            path = self.dir / f"{self.prefix}-{max(indices, default=-1) + 1:05d}.jsonl"
            self._file = open(path, "xb")
            fsync_dir(self.dir)
        return self._file

    def _acquire_lock(self) -> None:
        if fcntl is None:
            return
        self._lock = open(self.dir / f".{self.prefix}.lock", "ab")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock.close()
            self._lock = None
            raise DataError(
                f"{self.dir}: another process is writing shards '{self.prefix}-*' of this rollout store; "
                "wait for it, or give this writer its own shard_prefix",
                reason="store_locked",
            ) from e

    def close(self) -> None:
        """Close the open shard and release the writer lock."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> RolloutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------------------
    def shards(self) -> list[Path]:
        """Every shard in the folder (all prefixes; other files are ignored), in name order."""
        return sorted(p for p in self.dir.glob("*.jsonl") if _SHARD_NAME.fullmatch(p.name) and p.is_file())

    def _own_shards(self) -> list[Path]:
        return sorted(p for p in self.dir.glob(f"{self.prefix}-*.jsonl") if _shard_index(p) >= 0)

    def _lines(self) -> Iterator[tuple[Path, int, bytes]]:
        """(shard, 1-based line number, raw line) for every complete line; a torn tail (no newline) is skipped."""
        for shard in self.shards():
            with open(shard, "rb") as f:
                for lineno, line in enumerate(f, start=1):
                    if line.endswith(b"\n") and line.strip():
                        yield shard, lineno, line

    def _keys(self) -> Iterator[tuple[tuple[str, int], Path, int]]:
        for shard, lineno, line in self._lines():
            yield _line_key(shard, lineno, line), shard, lineno

    def iter_records(self) -> Iterator[RolloutRecord]:
        """Every stored record once per (prompt_id, sample_index), the last write winning, in storage order."""
        last = {key: (shard, lineno) for key, shard, lineno in self._keys()}
        for shard, lineno, line in self._lines():
            data = _parse_line(shard, lineno, line)
            key = (data.get("prompt_id"), data.get("sample_index"))
            if last.get(key) == (shard, lineno):
                yield RolloutRecord.from_dict(data, source=f"{shard} line {lineno}")

    def __iter__(self) -> Iterator[RolloutRecord]:
        return self.iter_records()

    def sample_indices(self) -> dict[str, set[int]]:
        """prompt_id -> the sample indices stored for it (reads only each line's key)."""
        out: dict[str, set[int]] = {}
        for (prompt_id, index), _, _ in self._keys():
            out.setdefault(prompt_id, set()).add(index)
        return out

    def done_prompt_ids(self, n: int) -> set[str]:
        """Prompts whose samples 0..n-1 are all stored: a rerun with the same n skips these."""
        return {pid for pid, got in self.sample_indices().items() if got.issuperset(range(n))}

    def __len__(self) -> int:
        return sum(len(v) for v in self.sample_indices().values())


def _shard_index(path: Path) -> int:
    """The number in `<prefix>-NNNNN.jsonl`, or -1 for a file that is not a shard."""
    stem = path.stem.rsplit("-", 1)
    return int(stem[1]) if len(stem) == 2 and stem[1].isdigit() else -1


def _parse_line(shard: Path, lineno: int, line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"{shard} line {lineno}: corrupt record ({e}); delete this line, and rerun the rollout command to "
            "regenerate the samples it held",
            reason="bad_record",
        ) from e
    if not isinstance(data, dict):
        raise DataError(f"{shard} line {lineno}: not a rollout record; delete this line", reason="bad_record")
    return data


def _line_key(shard: Path, lineno: int, line: bytes) -> tuple[str, int]:
    """(prompt_id, sample_index) of a line, from its prefix when it is in the writer's field order."""
    match = _KEY_PREFIX.match(line)
    if match:
        return json.loads(match.group(1)), int(match.group(2))
    data = _parse_line(shard, lineno, line)
    return data.get("prompt_id"), data.get("sample_index")


def _line_start(f: IO[bytes], end: int) -> int:
    """Offset just after the last b"\\n" before `end` (0 if none): where the line ending at `end` starts."""
    pos = end
    while pos > 0:
        size = min(_CHUNK, pos)
        f.seek(pos - size)
        chunk = f.read(size)
        k = chunk.rfind(b"\n")
        if k >= 0:
            return pos - size + k + 1
        pos -= size
    return 0


def _drop_torn_tail(path: Path) -> int:
    """Truncate a shard after its last complete, parseable line; returns the number of bytes dropped."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        keep = size if f.read(1) == b"\n" else _line_start(f, size)
        if keep > 0:
            start = _line_start(f, keep - 1)
            f.seek(start)
            try:
                json.loads(f.read(keep - start))
            except (json.JSONDecodeError, UnicodeDecodeError):
                keep = start  # a complete-looking but garbled last line: also the interrupted batch
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return size - keep
