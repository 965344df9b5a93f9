"""The MPO stage's data: an MMPR pairs file read, checked and tokenised, never truncated inside an image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cascade_rl.data import DataError, load_images, row_from_record
from cascade_rl.data.reader import iter_raw_records
from cascade_rl.models.pairs import EncodedPair, encode_pair


@dataclass
class PairSummary:
    rows: int = 0
    kept: int = 0
    dropped_overlong: int = 0
    dropped_lines: list[str] = field(default_factory=list)


def _check_pair(record, source: str) -> None:
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(f"{source}: missing or empty '{key}' text; fix the row or drop it", reason=f"no_{key}")


def load_pairs(
    path: str | Path, processor, *, image_root: str | None, max_tiles: int, max_length: int, on_overlong: str
) -> tuple[list[EncodedPair], PairSummary]:
    """Read and tokenise every pair. A pair longer than max_length is dropped and counted (`on_overlong="drop"`)
    or refused with its line (`"raise"`); it is never truncated, so image tokens always match image features."""
    pairs, summary = [], PairSummary()
    for source, record in tqdm(list(iter_raw_records(path)), desc="encode pairs", unit="pair"):
        if isinstance(record, DataError):
            raise record
        summary.rows += 1
        _check_pair(record, source)
        row = row_from_record(record, source)
        pair = encode_pair(
            processor,
            row.to_messages(),
            load_images(row, image_root),
            record["chosen"],
            record["rejected"],
            max_tiles=max_tiles,
        )
        if pair.num_tokens > max_length:
            if on_overlong == "raise":
                raise DataError(
                    f"{source}: pair is {pair.num_tokens} tokens, over max_length={max_length}; raise max_length, "
                    "lower max_tiles, or set on_overlong=drop",
                    reason="overlong",
                )
            summary.dropped_overlong += 1
            summary.dropped_lines.append(source)
            continue
        pairs.append(pair)
    summary.kept = len(pairs)
    return pairs, summary


def file_sha256(paths: list[Path]) -> str:
    """sha256 over the names and bytes of `paths` (sorted), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def checkpoint_fingerprint(path: str | Path) -> str:
    """Identity of a checkpoint directory: the hash of its config and safetensors weights."""
    path = Path(path)
    return file_sha256([path / "config.json", *path.glob("*.safetensors")])
