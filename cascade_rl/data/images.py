"""Image paths and loading: resolve against an image root, check cheaply at read time, load as RGB."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cascade_rl.data.errors import DataError
from cascade_rl.data.rows import PromptRow


def resolve_image(path: str, image_root: str | os.PathLike | None) -> Path:
    """`image_root / path` for a relative path, `path` itself when absolute or when there is no root."""
    p = Path(path)
    if p.is_absolute() or image_root is None:
        return p
    return Path(image_root) / p


def image_problem(path: str, image_root: str | os.PathLike | None) -> tuple[str, str] | None:
    """None if the image exists and its header is a known image format, else (reason, message).

    Reads the header only (PIL opens lazily), so it is cheap enough to run on every row at read time;
    a file truncated after its header still fails later, in `load_images`.
    """
    full = resolve_image(path, image_root)
    if not full.is_file():
        return "missing_image", f"image '{path}' not found under image_root={image_root}"
    try:
        with Image.open(full) as img:
            img.size  # noqa: B018 - touching size makes PIL parse the header
    except (UnidentifiedImageError, OSError) as e:
        return "unreadable_image", f"image '{path}' under image_root={image_root} is not a readable image ({e})"
    return None


def load_images(row: PromptRow, image_root: str | os.PathLike | None) -> list[Image.Image]:
    """Load a row's images as fully decoded PIL RGB images, in the row's order.

    A missing or undecodable file raises DataError naming the row's source and the fix.
    """
    images = []
    for path in row.images:
        full = resolve_image(path, image_root)
        try:
            with Image.open(full) as img:
                images.append(img.convert("RGB"))
        except FileNotFoundError as e:
            raise DataError(
                f"{row.source or row.id}: image '{path}' not found under image_root={image_root}; "
                "fix the path or the image root",
                reason="missing_image",
            ) from e
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(
                f"{row.source or row.id}: image '{path}' under image_root={image_root} cannot be decoded ({e}); "
                "replace the file or drop the row",
                reason="unreadable_image",
            ) from e
    return images
