"""The MPO stage's pair source: a pairs file read, checked and measured up front, then encoded pair by pair.

Read top to bottom: `load_pairs` reads the file and keeps each admitted pair as a `PairRow` (`measure_pair` checks a
record and counts its tokens; the over-long rule, drop or raise and never truncate inside an image, is decided here,
before training); `PairSource.encode` turns one kept pair into model tensors when a micro-batch (or the reference
pass) needs it. The model-family work is two calls into models/pairs.py: `pair_num_tokens` (from image sizes read
off the file headers, no pixels) and `encode_pair` (images loaded and tiled). Resident memory no longer grows with
the dataset (InternVL: up to 13 × 448² × 3 floats, ~31 MB, per pair). Scoring an encoded pair is
`models.pairs.pair_token_logps`, called by the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cascade_rl.data import DataError, PromptRow, image_sizes, load_images, row_from_record
from cascade_rl.data.reader import iter_raw_records
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
    return PairSource(
        rows, processor, image_root=image_root, max_tiles=max_tiles, system_prompt=system_prompt
    ), summary


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
    return PairRow(row, record["chosen"], record["rejected"], tokens)


def _check_pair(record, source: str) -> None:
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(f"{source}: missing or empty '{key}' text; fix the row or drop it", reason=f"no_{key}")


@dataclass(frozen=True)
class PairRow:
    """What re-encodes one kept pair: its prompt row (question, image paths, system prompt, source line), the two
    completion texts, and its token count (`EncodedPair.num_tokens`), measured at load time."""

    row: PromptRow
    chosen: str
    rejected: str
    num_tokens: int


class PairSource:
    """The kept pairs of a pairs file; `encode(i)` loads and tiles pair i's images on each call (nothing cached).

    Holds only `PairRow`s (text and paths): no pixels, no token tensors. `system_prompt`: the system message of
    pairs without their own.
    """

    def __init__(
        self,
        rows: list[PairRow],
        processor,
        *,
        image_root: str | None,
        max_tiles: int,
        system_prompt: str | None = None,
    ):
        self.rows, self.processor, self.image_root, self.max_tiles = rows, processor, image_root, max_tiles
        self.system_prompt = system_prompt

    def __len__(self) -> int:
        return len(self.rows)

    def num_tokens(self, i: int) -> int:
        """Tokens of pair i's longer full sequence, without encoding it."""
        return self.rows[i].num_tokens

    def encode(self, i: int) -> EncodedPair:
        """Pair i tokenised, its images loaded and tiled; exactly what an up-front `encode_pair` gave."""
        item = self.rows[i]
        images = load_images(item.row, self.image_root)
        messages = item.row.to_messages(self.system_prompt)
        pair = encode_pair(self.processor, messages, images, item.chosen, item.rejected, max_tiles=self.max_tiles)
        if pair.num_tokens != item.num_tokens:  # e.g. an image replaced by one of another size since loading
            raise DataError(
                f"{item.row.source}: pair encodes to {pair.num_tokens} tokens but measured {item.num_tokens} when "
                "the pairs were loaded; did its images change on disk? Restore them or restart the run",
                reason="changed_since_load",
            )
        return pair
