"""Prepare a custom dataset: a jsonl of prompts plus an image folder, checked the way every stage reads it.

Each row: {"id": optional, "image": "relative/path.png" or a list, "question": "...", "answer": ground truth,
any other column (bbox, data_source, ...)}. A `<image>` placeholder in the question marks where the image goes
(one per image, or none: images then come first). Rows with a `response` column also serve as SFT data.

Run: python examples/custom_dataset.py [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from cascade_rl.data import read_prompts


def write_dataset(out: Path) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, n in enumerate([1, 2, 3]):
        image = Image.new("RGB", (96, 64), "white")
        for k in range(n):
            ImageDraw.Draw(image).ellipse([8 + 28 * k, 20, 28 + 28 * k, 40], fill="red")
        image.save(out / "images" / f"{i}.png")
        rows.append(
            {
                "id": f"dots-{i}",
                "image": f"images/{i}.png",
                "question": "<image>\nHow many red dots?",
                "answer": str(n),
                "response": f"I count {n}. Answer: \\boxed{{{n}}}",
            }
        )
    rows.append({"id": "broken", "image": "images/missing.png", "question": "How many?", "answer": "1"})
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main(out: Path) -> None:
    path = write_dataset(out)
    rows, summary = read_prompts(path, image_root=out, on_error="skip")
    print(f"{len(rows)} usable rows; skipped: {summary.n_skipped} ({summary})")
    print("point a recipe at it with: data.train=" + str(path) + " data.image_root=" + str(out))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example_dataset"))
