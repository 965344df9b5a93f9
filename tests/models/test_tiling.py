"""Tile counts follow InternVL's dynamic_preprocess rule (SPEC §6)."""

import pytest
import torch
from synthetic import shapes_image

from cascade_rl.models import process_images


def internvl_tile_count(width: int, height: int, tile: int, min_num: int = 1, max_num: int = 12) -> int:
    """Independent reference of InternVL's rule: closest aspect-ratio grid with min ≤ i·j ≤ max; on a tie the
    larger grid wins when the image area > 0.5·tile²·i·j; a thumbnail is appended when there is more than 1 tile."""
    grids = sorted(
        {
            (i, j)
            for n in range(min_num, max_num + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_num <= i * j <= max_num
        },
        key=lambda g: g[0] * g[1],
    )
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    blocks = best[0] * best[1]
    return blocks + 1 if blocks > 1 else blocks


# Tile 64 px, at most 6 tiles (the tiny preset):
# - 128×128 square: grids (1,1) and (2,2) tie at diff 0; area 16384 > 0.5·64²·4 = 8192, so 2×2 = 4 tiles + thumbnail.
# - 64×64 square: area 4096 ≤ 8192, so (1,1) stays: 1 tile, no thumbnail.
# - 128×64 (2:1): grid (2,1) exact, (4,2) exceeds 6 tiles: 2 tiles + thumbnail.
# - 192×128 (3:2): grid (3,2) exact and 6 ≤ 6: 6 tiles + thumbnail.
@pytest.mark.parametrize(("width", "height", "expected"), [(128, 128, 5), (64, 64, 1), (128, 64, 3), (192, 128, 7)])
def test_tile_count_matches_internvl_rule(tiny_internvl, width, height, expected):
    _, processor = tiny_internvl
    pixel_values, num_tiles = process_images(processor, [shapes_image(width, height)], max_tiles=6)
    assert internvl_tile_count(width, height, tile=64, max_num=6) == expected
    assert num_tiles == [expected]
    assert pixel_values.shape == (expected, 3, 64, 64)


def test_thumbnail_is_the_whole_image_resized(tiny_internvl):
    _, processor = tiny_internvl
    image = shapes_image(128, 64)
    pixel_values, _ = process_images(processor, [image], max_tiles=6)
    thumbnail, _ = process_images(processor, [image.resize((64, 64))], max_tiles=1)
    torch.testing.assert_close(pixel_values[-1], thumbnail[0], atol=0.05, rtol=0)


def test_max_tiles_caps_the_grid(tiny_internvl):
    _, processor = tiny_internvl
    _, num_tiles = process_images(processor, [shapes_image(192, 128)], max_tiles=2)
    # 3:2 with at most 2 tiles: candidates (1,1) diff 0.5, (1,2) diff 1.0, (2,1) diff 0.5 → tie with (1,1);
    # area 24576 > 0.5·64²·2 = 4096, so (2,1) wins: 2 tiles + thumbnail.
    assert num_tiles == [internvl_tile_count(192, 128, tile=64, max_num=2)] == [3]
