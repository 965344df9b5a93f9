"""Image paths and loading: resolve against an image root, read sizes from headers, load as RGB.

`image_sizes` reads only the file headers (PIL opens lazily), so it is cheap enough to run on every row up front:
the prompt reader checks images with it, and the MPO pair source sizes them with it (sizes fix the tile counts).
`load_images` decodes the pixels. Both name the row, the image and the fix when a file is missing or unreadable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image

from cascade_rl.data.errors import DataError
from cascade_rl.data.rows import PromptRow

T = TypeVar("T")


def resolve_image(path: str, image_root: str | os.PathLike | None) -> Path:
    """`image_root / path` for a relative path, `path` itself when absolute or when there is no root."""
    p = Path(path)
    if p.is_absolute() or image_root is None:
        return p
    return Path(image_root) / p


def image_sizes(row: PromptRow, image_root: str | os.PathLike | None) -> list[tuple[int, int]]:
    """(width, height) of each of the row's images, in the row's order, from the file headers only.

    A file truncated after its header still fails later, in `load_images`.
    """
    return _open_each(row, image_root, lambda img: img.size)


def load_images(row: PromptRow, image_root: str | os.PathLike | None) -> list[Image.Image]:
    """Load a row's images as fully decoded PIL RGB images, in the row's order."""
    return _open_each(row, image_root, lambda img: img.convert("RGB"))


def _open_each(row: PromptRow, image_root: str | os.PathLike | None, read: Callable[[Image.Image], T]) -> list[T]:
    """`read(image)` for each of the row's images; a missing or unreadable file raises `_image_error`'s DataError."""
    out = []
    for path in row.images:
        try:
            with Image.open(resolve_image(path, image_root)) as img:
                out.append(read(img))
        except OSError as e:  # FileNotFoundError, PIL's UnidentifiedImageError and decode errors are all OSErrors
            raise _image_error(row, path, image_root, e) from e
    return out


def _image_error(row: PromptRow, path: str, image_root, error: OSError) -> DataError:
    """A DataError naming the row's source, the image, the root and the fix."""
    where = f"{row.source or row.id}: image '{path}'"
    if isinstance(error, FileNotFoundError):
        return DataError(
            f"{where} not found under image_root={image_root}; fix the path or the image root", reason="missing_image"
        )
    return DataError(
        f"{where} under image_root={image_root} cannot be decoded ({error}); replace the file or drop the row",
        reason="unreadable_image",
    )
