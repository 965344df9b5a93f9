"""Deterministic synthetic inputs for tests, rendered in-process."""

from PIL import Image, ImageDraw


def shapes_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Coloured 10-pixel squares on white; the same arguments always give the same picture."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    colours = ["red", "green", "blue", "orange"]
    for i in range(3):
        x, y = (17 * (i + seed)) % max(width - 10, 1), (29 * (i + seed)) % max(height - 10, 1)
        draw.rectangle([x, y, x + 9, y + 9], fill=colours[(i + seed) % len(colours)])
    return image
