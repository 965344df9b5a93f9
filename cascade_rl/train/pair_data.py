"""The MPO stage's data: an MMPR pairs file read, checked and measured up front, encoded pair by pair when used.

The up-front pass keeps no pixels: it validates each row, reads only its images' headers (their sizes fix the tile
counts) and counts tokens, so the over-long rule (drop or raise, never truncate inside an image) is decided before
training. `PairSource.encode` loads and tiles one pair's images when a micro-batch (or the reference pass) needs
them: resident memory no longer grows with the dataset (InternVL: up to 13 × 448² × 3 floats, ~31 MB, per pair).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cascade_rl.data import DataError, PromptRow, load_images, resolve_image, row_from_record
from cascade_rl.data.reader import iter_raw_records
from cascade_rl.models.pairs import EncodedPair, encode_pair, image_tiles, pair_num_tokens
from cascade_rl.train.lengths import admit


@dataclass
class PairSummary:
    rows: int = 0
    kept: int = 0
    dropped_overlong: int = 0
    dropped_lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PairRow:
    """What re-encodes one kept pair: its prompt row (question, image paths, source line), the two completion
    texts, and its token count (`EncodedPair.num_tokens`), measured at load time."""

    row: PromptRow
    chosen: str
    rejected: str
    num_tokens: int


class PairSource:
    """The kept pairs of a pairs file; `encode(i)` loads and tiles pair i's images on each call (nothing cached).

    Holds only `PairRow`s (text and paths): no pixels, no token tensors.
    """

    def __init__(self, rows: list[PairRow], processor, *, image_root: str | None, max_tiles: int):
        self.rows, self.processor, self.image_root, self.max_tiles = rows, processor, image_root, max_tiles

    def __len__(self) -> int:
        return len(self.rows)

    def num_tokens(self, i: int) -> int:
        """Tokens of pair i's longer full sequence, without encoding it."""
        return self.rows[i].num_tokens

    def encode(self, i: int) -> EncodedPair:
        """Pair i tokenised, its images loaded and tiled; exactly what an up-front `encode_pair` gave."""
        item = self.rows[i]
        images = load_images(item.row, self.image_root)
        pair = encode_pair(
            self.processor, item.row.to_messages(), images, item.chosen, item.rejected, max_tiles=self.max_tiles
        )
        if pair.num_tokens != item.num_tokens:  # e.g. an image replaced by one of another size since loading
            raise DataError(
                f"{item.row.source}: pair encodes to {pair.num_tokens} tokens but measured {item.num_tokens} when "
                "the pairs were loaded; did its images change on disk? Restore them or restart the run",
                reason="changed_since_load",
            )
        return pair


def _check_pair(record, source: str) -> None:
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(f"{source}: missing or empty '{key}' text; fix the row or drop it", reason=f"no_{key}")


def image_sizes(row: PromptRow, image_root: str | os.PathLike | None) -> list[tuple[int, int]]:
    """(width, height) of each of the row's images, from the file headers only (no pixels decoded).

    A missing or unreadable file raises DataError naming the row's source and the fix, as `load_images` does.
    """
    sizes = []
    for path in row.images:
        try:
            with Image.open(resolve_image(path, image_root)) as img:
                sizes.append(img.size)
        except FileNotFoundError as e:
            raise DataError(
                f"{row.source}: image '{path}' not found under image_root={image_root}; "
                "fix the path or the image root",
                reason="missing_image",
            ) from e
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(
                f"{row.source}: image '{path}' under image_root={image_root} cannot be read ({e}); "
                "replace the file or drop the row",
                reason="unreadable_image",
            ) from e
    return sizes


def measure_pair(record, source: str, processor, *, image_root: str | None, max_tiles: int) -> PairRow:
    """Validate one raw record and count its tokens; images are sized from their headers, never tiled."""
    _check_pair(record, source)
    row = row_from_record(record, source)
    tiles = image_tiles(processor, image_sizes(row, image_root), max_tiles=max_tiles)
    tokens = pair_num_tokens(processor, row.to_messages(), tiles, record["chosen"], record["rejected"])
    return PairRow(row, record["chosen"], record["rejected"], tokens)


def load_pairs(
    path: str | Path, processor, *, image_root: str | None, max_tiles: int, max_length: int, on_overlong: str
) -> tuple[PairSource, PairSummary]:
    """Read, check and measure every pair (no pixels kept). A pair longer than max_length is dropped and counted
    (`on_overlong="drop"`) or refused with its line (`"raise"`); it is never truncated, so image tokens always
    match image features."""
    rows, summary = [], PairSummary()
    for source, record in tqdm(list(iter_raw_records(path)), desc="measure pairs", unit="pair"):
        if isinstance(record, DataError):
            raise record
        summary.rows += 1
        pair = measure_pair(record, source, processor, image_root=image_root, max_tiles=max_tiles)
        if admit(summary, source, pair.num_tokens, max_length=max_length, on_overlong=on_overlong, what="pair"):
            rows.append(pair)
    summary.kept = len(rows)
    return PairSource(rows, processor, image_root=image_root, max_tiles=max_tiles), summary
