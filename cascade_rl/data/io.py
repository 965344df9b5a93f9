"""File helpers shared by every data writer and reader: atomic writes and line-numbered jsonl reading."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cascade_rl.data.errors import DataError


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a directory entry (a new or renamed file) on POSIX; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, chunks: Iterable[str]) -> Path:
    """Write `chunks` to `path` all-or-nothing: a temp file in the same folder, fsync, then rename over `path`.

    A crash leaves either the old file or the new one, never half of one (the temp file is removed on error).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is), atomically."""
    return atomic_write_text(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write one indented JSON document, atomically."""
    return atomic_write_text(path, [json.dumps(obj, ensure_ascii=False, indent=2) + "\n"])


def parse_json_line(path: str | os.PathLike, lineno: int, line: str) -> Any:
    """Parse one jsonl line; bad JSON raises DataError naming file:line and the fix."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
            "fix or delete the line (each line must hold one JSON object)",
            reason="bad_json",
        ) from e


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, raw text) for each non-blank line of a jsonl file."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed object) per non-blank line; bad JSON raises DataError naming file:line."""
    for lineno, line in iter_jsonl_lines(path):
        yield lineno, parse_json_line(path, lineno, line)
