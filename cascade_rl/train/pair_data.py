"""The MPO stage's pair source: a pairs file read, checked and measured up front, then encoded pair by pair.

Read top to bottom: `load_pairs` reads the file and keeps each admitted pair as a `PairRow` (`measure_pair` checks a
record and counts its tokens; the over-long rule, drop or raise and never truncate inside an image, is decided here,
before training); `PairSource.encode` turns one kept pair into model tensors when a micro-batch (or the reference
pass) needs it. The model-family work is two calls into models/pairs.py: `pair_num_tokens` (from image sizes read
off the file headers, no pixels) and `encode_pair` (images loaded and tiled). Resident memory no longer grows with
the dataset (InternVL: up to 13 × 448² × 3 floats, ~31 MB, per pair). Scoring an encoded pair is
`models.pairs.pair_token_logps`, called by the stage.

`load_mmpr_pairs` reads InternVL's MMPR meta json the same way: each dataset's rows with its own image root and tile
budget (`max_dynamic_patch`, else the stage's `max_tiles`), after `repeat_time` (data_tools/mmpr.py::read_mmpr).
A pair keeps its image root and tile budget, so pairs of both sources mix in one `PairSource` (`+`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cascade_rl.data import DataError, PromptRow, image_sizes, load_images, row_from_record
from cascade_rl.data.reader import iter_raw_records
from cascade_rl.data_tools.mmpr import read_mmpr
from cascade_rl.models.pairs import EncodedPair, encode_pair, pair_num_tokens
from cascade_rl.train.lengths import LoadSummary, admit


class PairFileSummary(LoadSummary):
    """Counts from loading one pairs file (see LoadSummary)."""


def load_pairs(
    path: str | Path | Sequence[str | Path],
    processor,
    *,
    image_root: str | None,
    max_tiles: int,
    max_length: int,
    on_overlong: str,
    system_prompt: str | None = None,
) -> tuple[PairSource, PairFileSummary]:
    """Read, check and measure every pair of one file or several, in order (no pixels kept). A pair longer than
    max_length is dropped and counted (`on_overlong="drop"`) or refused with its line (`"raise"`); it is never
    truncated, so image tokens always match image features. `system_prompt`: the system message of pairs without
    their own `system_prompt`."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    records = [item for one in paths for item in iter_raw_records(one)]
    rows, summary = [], PairFileSummary()
    for source, record in tqdm(records, desc="measure pairs", unit="pair"):
        if isinstance(record, DataError):
            raise record
        summary.rows += 1
        pair = measure_pair(
            record, source, processor, image_root=image_root, max_tiles=max_tiles, system_prompt=system_prompt
        )
        if admit(summary, source, pair.num_tokens, max_length=max_length, on_overlong=on_overlong, what="pair"):
            rows.append(pair)
    summary.kept = len(rows)
    return PairSource(rows, processor), summary


@dataclass
class MMPRPairSummary(LoadSummary):
    """Counts from loading an MMPR meta (see LoadSummary; `rows` after repeat_time) and the pairs kept per dataset."""

    per_dataset: dict[str, int] = field(default_factory=dict)


def load_mmpr_pairs(
    meta_path: str | Path,
    processor,
    *,
    seed: int,
    max_tiles: int,
    max_length: int,
    on_overlong: str,
    system_prompt: str | None = None,
) -> tuple[PairSource, MMPRPairSummary]:
    """Read, check and measure every pair of an MMPR meta's datasets as `load_pairs` does a pairs file; a dataset's
    rows take their images from its `root` and tile them within its `max_dynamic_patch` (`max_tiles` when it has
    none); `repeat_time` < 1 draws a random subset with `seed`, > 1 repeats the dataset."""
    datasets, _ = read_mmpr(meta_path, seed=seed)
    rows, summary = [], MMPRPairSummary()
    for ds, lines in datasets:
        budget = ds.max_dynamic_patch or max_tiles
        kept = 0
        for line in tqdm(lines, desc=f"measure {ds.name}", unit="pair"):
            summary.rows += 1
            root = ds.root or None
            pair = measure_pair(
                line.row, line.source, processor, image_root=root, max_tiles=budget, system_prompt=system_prompt
            )
            if admit(
                summary, line.source, pair.num_tokens, max_length=max_length, on_overlong=on_overlong, what="pair"
            ):
                rows.append(pair)
                kept += 1
        summary.per_dataset[ds.name] = kept
    summary.kept = len(rows)
    return PairSource(rows, processor), summary


def measure_pair(
    record, source: str, processor, *, image_root: str | None, max_tiles: int, system_prompt: str | None = None
) -> PairRow:
    """Validate one raw record and count its tokens (system message: the record's own `system_prompt`, else
    `system_prompt`); images are sized from their headers, never tiled."""
    _check_pair(record, source)
    row = row_from_record(record, source)
    sizes = image_sizes(row, image_root)
    messages = row.to_messages(system_prompt)
    tokens = pair_num_tokens(processor, messages, sizes, record["chosen"], record["rejected"], max_tiles=max_tiles)
    return PairRow(row, record["chosen"], record["rejected"], tokens, image_root, max_tiles, system_prompt)


def _check_pair(record, source: str) -> None:
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(f"{source}: missing or empty '{key}' text; fix the row or drop it", reason=f"no_{key}")


@dataclass(frozen=True)
class PairRow:
    """What re-encodes one kept pair: its prompt row (question, image paths, own system prompt, source line), the
    two completion texts, its token count (`EncodedPair.num_tokens`) measured at load time, the folder its image
    paths are relative to, its tile budget (`max_tiles`, as `encode_pair` takes it) and the system prompt it falls
    back to without its own."""

    row: PromptRow
    chosen: str
    rejected: str
    num_tokens: int
    image_root: str | None
    max_tiles: int
    system_prompt: str | None = None


class PairSource:
    """The kept pairs of a pairs file or MMPR meta; `encode(i)` loads and tiles pair i's images on each call (nothing
    cached). `a + b`: a's pairs, then b's.

    Holds only `PairRow`s (text and paths): no pixels, no token tensors.
    """

    def __init__(self, rows: list[PairRow], processor):
        self.rows, self.processor = rows, processor

    def __len__(self) -> int:
        return len(self.rows)

    def __add__(self, other: PairSource) -> PairSource:
        return PairSource(self.rows + other.rows, self.processor)

    def fingerprint(self) -> str:
        """sha256 of everything that decides how the pairs encode, in order: texts, image paths and roots, tile
        budgets (the reference cache key). Image files are not hashed."""
        digest = hashlib.sha256()
        for p in self.rows:
            fields = [
                p.row.system_prompt,
                p.system_prompt,
                p.row.question,
                p.row.images,
                p.chosen,
                p.rejected,
                p.image_root,
                p.max_tiles,
            ]
            digest.update(json.dumps(fields).encode() + b"\n")
        return digest.hexdigest()

    def num_tokens(self, i: int) -> int:
        """Tokens of pair i's longer full sequence, without encoding it."""
        return self.rows[i].num_tokens

    def encode(self, i: int) -> EncodedPair:
        """Pair i tokenised, its images loaded and tiled; exactly what an up-front `encode_pair` gave."""
        item = self.rows[i]
        images = load_images(item.row, item.image_root)
        pair = encode_pair(
            self.processor,
            item.row.to_messages(item.system_prompt),
            images,
            item.chosen,
            item.rejected,
            max_tiles=item.max_tiles,
        )
        if pair.num_tokens != item.num_tokens:  # e.g. an image replaced by one of another size since loading
            raise DataError(
                f"{item.row.source}: pair encodes to {pair.num_tokens} tokens but measured {item.num_tokens} when "
                "the pairs were loaded; did its images change on disk? Restore them or restart the run",
                reason="changed_since_load",
            )
        return pair
