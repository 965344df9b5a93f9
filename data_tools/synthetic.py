"""A synthetic visual task rendered in-process: coloured shapes on a grid, to count or to locate.

Scene: a white `image_size`² canvas cut into `grid` × `grid` cells; each object fills one cell less `margin` pixels
on every side (shifted by up to `jitter` pixels), so objects never touch and every object is one cell. On a 64-px
image the tiny InternVL sees 16 image tokens, one per 16-px square: with the default 2 × 2 grid an object covers 4
of them, which is what keeps the task learnable by a ~200k-parameter model in a few hundred steps (ShapesTask).

Two kinds of row:
- count:  "How many red squares are there?" → `answer` "N" (the `math` reward), response `Answer: \\boxed{N}`.
  N is uniform in [0, max_count]; up to `max_distractors` objects of other (colour, shape) kinds are added.
- locate: "Where is the blue circle?" → `bbox` [x1, y1, x2, y2] in InternVL's 0–1000 frame (the `iou` reward),
  response `<ref>blue circle</ref><box>[[x1, y1, x2, y2]]</box>`. The target is the only object of its kind.

SFT responses can come from a sloppy teacher (`teacher_error` q, count rows only): with probability q (drawn per
row from its own stream, so the scene does not change) the response counts every object of the asked shape whatever
its colour, e.g. "How many red squares?" over 1 red and 2 blue squares → `\\boxed{3}`. The `answer` column (what the
rewards check) stays the true count. Imitating such data leaves a policy torn between the two counts wherever
distractors of the same shape are present, which is what verifiable-reward RL can correct and imitation cannot.

Background: "white", or "grid" — each cell tinted by its row and column (a pale colour ramp), which puts the
cell's position into its pixels (an aid for vision towers that do not encode position well; off by default).

The box is the tight box of the target's painted pixels (x2, y2 exclusive), normalised as round(v / size · 1000)
(SPEC §6). Difficulty knobs: max_count, colours, shapes, max_distractors, jitter (position noise inside a cell),
asked_colours (the colours count questions ask about; the others appear only as distractors).
Everything is a function of (seed, row index): row i is the same whatever n is, on every machine.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

from cascade_rl.config import check_choices
from cascade_rl.data.io import atomic_write_json, atomic_write_jsonl
from cascade_rl.rewards.grounding import normalize_box

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (230, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("square", "circle", "triangle")
KINDS = ("count", "locate")
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ShapesTask:
    """The task's difficulty knobs. The defaults are the demo task: a 2 × 2 grid (each object covers 4 of the 16
    image tokens), red and blue squares, 0–2 targets and 0–2 distractors; chance is 1/3 for counting and 1/4 for
    locating. Measured with the tiny InternVL (lr 3e-3, batch 16, cosine): held-out accuracy 22% after 100 SFT
    steps, 35% after 300, 83% after 400. A 4 × 4 grid (one image token per object) is much slower to learn: mixed
    count + locate was still at chance after 600 steps."""

    image_size: int = 64
    grid: int = 2
    margin: int = 2
    jitter: int = 0
    colours: tuple[str, ...] = ("red", "blue")
    shapes: tuple[str, ...] = ("square",)
    max_count: int = 2
    max_distractors: int = 2
    background: Literal["white", "grid"] = "white"
    asked_colours: tuple[str, ...] = ()  # the colours count questions ask about (empty: any of `colours`)

    def __post_init__(self):
        check_choices(self)
        if not set(self.asked_colours) <= set(self.colours):
            raise ValueError(f"asked_colours {list(self.asked_colours)} must be among colours {list(self.colours)}")
        unknown = [c for c in self.colours if c not in PALETTE] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; choose from {sorted(PALETTE)} and {list(SHAPES)}")
        if len(self.colours) * len(self.shapes) < 2:
            raise ValueError("need at least 2 (colour, shape) kinds so that distractors differ from the target")
        if self.max_count + self.max_distractors > self.grid**2:
            raise ValueError(f"max_count + max_distractors must fit in the {self.grid**2} cells of the grid")
        inner = self.cell - 2 * self.margin - 2 * self.jitter
        if self.image_size % self.grid or inner < 3:
            raise ValueError(
                f"image_size {self.image_size} must split into {self.grid} cells that leave ≥ 3 px per object "
                f"after margin {self.margin} and jitter {self.jitter}; use a larger image or fewer cells"
            )

    @property
    def cell(self) -> int:
        return self.image_size // self.grid

    @property
    def kinds(self) -> list[tuple[str, str]]:
        return [(c, s) for c in self.colours for s in self.shapes]


@dataclass
class SceneObject:
    """One painted object: colour and shape names, and its pixel box [x1, y1, x2, y2) on the canvas."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]


@dataclass
class Example:
    """One rendered row: image, question, ground truth (`answer` or `bbox`), SFT `response`, scene objects."""

    kind: str
    image: Image.Image
    question: str
    response: str
    answer: str | None = None
    bbox: list[int] | None = None
    objects: list[SceneObject] = field(default_factory=list)


def plural(shape: str) -> str:
    return shape + "s"


def draw_object(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Paint `shape` filling the pixel box [x1, y1, x2, y2) (PIL's boxes are inclusive, hence the -1)."""
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
    elif shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
    else:  # triangle, apex up
        draw.polygon([((x1 + x2 - 1) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)


def painted_box(shape: str, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The tight box [x1, y1, x2, y2) of the pixels `draw_object` paints inside `box` (exact for every shape)."""
    mask = Image.new("L", (box[2], box[3]), 0)
    draw_object(ImageDraw.Draw(mask), shape, box, 255)
    return mask.getbbox()


def place_objects(task: ShapesTask, kinds: list[tuple[str, str]], rng: random.Random) -> list[SceneObject]:
    """Put one object of each (colour, shape) in `kinds` into distinct random cells, with jitter."""
    cells = rng.sample(range(task.grid**2), len(kinds))
    objects = []
    for (colour, shape), cell in zip(kinds, cells):
        row, col = divmod(cell, task.grid)
        dx, dy = (rng.randint(-task.jitter, task.jitter) for _ in range(2))
        x1, y1 = col * task.cell + task.margin + task.jitter + dx, row * task.cell + task.margin + task.jitter + dy
        side = task.cell - 2 * task.margin - 2 * task.jitter
        objects.append(SceneObject(colour, shape, painted_box(shape, (x1, y1, x1 + side, y1 + side))))
    return objects


def render(task: ShapesTask, objects: list[SceneObject]) -> Image.Image:
    image = Image.new("RGB", (task.image_size, task.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if task.background == "grid":
        for cell in range(task.grid**2):
            row, col = divmod(cell, task.grid)
            x, y = col * task.cell, row * task.cell
            draw.rectangle([x, y, x + task.cell - 1, y + task.cell - 1], fill=cell_tint(task, row, col))
    for obj in objects:
        draw_object(draw, obj.shape, obj.box, PALETTE[obj.colour])
    return image


def cell_tint(task: ShapesTask, row: int, col: int) -> tuple[int, int, int]:
    """The "grid" background of cell (row, col): red falls with the column, green with the row (by ≤ 96 levels)."""
    step = 96 // max(task.grid - 1, 1)
    return (255 - step * col, 255 - step * row, 255)


def distractors(task: ShapesTask, target: tuple[str, str], rng: random.Random) -> list[tuple[str, str]]:
    """0..max_distractors objects of any kind other than `target` (repeats allowed)."""
    others = [k for k in task.kinds if k != target]
    return [rng.choice(others) for _ in range(rng.randint(0, task.max_distractors))]


def count_example(task: ShapesTask, rng: random.Random) -> Example:
    asked = [k for k in task.kinds if k[0] in task.asked_colours] if task.asked_colours else task.kinds
    target = rng.choice(asked)
    n = rng.randint(0, task.max_count)
    kinds = [target] * n + distractors(task, target, rng)
    objects = place_objects(task, kinds, rng)
    colour, shape = target
    return Example(
        kind="count",
        image=render(task, objects),
        question=f"How many {colour} {plural(shape)} are there?",
        response=f"Answer: \\boxed{{{n}}}",
        answer=str(n),
        objects=objects,
    )


def locate_example(task: ShapesTask, rng: random.Random) -> Example:
    target = rng.choice(task.kinds)
    kinds = [target] + distractors(task, target, rng)
    objects = place_objects(task, kinds, rng)
    size = task.image_size
    bbox = normalize_box(objects[0].box, size, size)
    phrase = " ".join(target)
    rng.shuffle(objects)  # the target's position in the list says nothing
    return Example(
        kind="locate",
        image=render(task, objects),
        question=f"Where is the {phrase}?",
        response=f"<ref>{phrase}</ref><box>[[{bbox[0]}, {bbox[1]}, {bbox[2]}, {bbox[3]}]]</box>",
        bbox=bbox,
        objects=objects,
    )


def sloppy_count(example: Example, shape: str) -> str:
    """The sloppy teacher's answer to a count question: every object of `shape`, whatever its colour."""
    return str(sum(obj.shape == shape for obj in example.objects))


def teacher_response(example: Example, teacher_error: float, seed: int, index: int) -> str:
    """The SFT response of row `index`: the sloppy count with probability `teacher_error` on count rows, else the
    true response. Drawn from its own stream ("teacher:seed:index"), so the scene is the same at any error rate."""
    if example.kind != "count" or random.Random(f"teacher:{seed}:{index}").random() >= teacher_error:
        return example.response
    shape = next(s for s in SHAPES if example.question.endswith(f"{plural(s)} are there?"))
    return f"Answer: \\boxed{{{sloppy_count(example, shape)}}}"


def make_example(task: ShapesTask, kind: str, seed: int, index: int) -> Example:
    """Row `index` of a dataset with `seed`: a function of (task, kind, seed, index) only."""
    rng = random.Random(f"shapes:{seed}:{index}")  # str seeds hash with sha512: stable across runs and machines
    if kind == "count":
        return count_example(task, rng)
    if kind == "locate":
        return locate_example(task, rng)
    raise ValueError(f"unknown kind {kind!r}; choose from {list(KINDS)}")


def write_synthetic_dataset(
    out_dir: str | Path,
    n: int,
    *,
    seed: int,
    split_name: str = "train",
    kinds: tuple[str, ...] = KINDS,
    image_size: int = 64,
    teacher_error: float = 0.0,
    **knobs,
) -> dict:
    """Write `out_dir/<split>.jsonl` and `out_dir/images/<split>-NNNNN.png`; returns a summary dict.

    Rows alternate over `kinds`. Columns: id, image, question, kind, answer (count rows; null otherwise), bbox
    (locate rows; null otherwise), response (the SFT target). Both ground-truth columns are on every row so that a
    mixed batch hands each reward a full column; `math` and `iou` return None (does not apply) on a null gold.
    The file reads with `read_prompts` (prompt stages) and `SFTConfig.data` (SFT). `knobs` are ShapesTask fields;
    `teacher_error` makes the responses of count rows sloppy with that probability (module docstring).
    """
    if not 0.0 <= teacher_error <= 1.0:
        raise ValueError(f"teacher_error is a probability, in [0, 1]; got {teacher_error}")
    task = ShapesTask(image_size=image_size, **knobs)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds {list(kinds)}: choose one or more of {list(KINDS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, wrong = [], 0
    for i in range(n):
        example = make_example(task, kinds[i % len(kinds)], seed, i)
        response = teacher_response(example, teacher_error, seed, i)
        wrong += response != example.response
        name = f"images/{split_name}-{i:05d}.png"
        example.image.save(out / name)
        rows.append(
            {
                "id": f"{split_name}-{i:05d}",
                "image": name,
                "question": example.question,
                "kind": example.kind,
                "answer": example.answer,
                "bbox": example.bbox,
                "response": response,
            }
        )
    path = atomic_write_jsonl(out / f"{split_name}.jsonl", rows)
    summary = {
        "path": str(path),
        "image_root": str(out),
        "rows": n,
        "seed": seed,
        "teacher_error": teacher_error,
        "wrong_responses": wrong,
        "kinds": dict(Counter(r["kind"] for r in rows)),
        "count_answers": dict(sorted(Counter(r["answer"] for r in rows if r["answer"] is not None).items())),
        "task": asdict(task),
    }
    atomic_write_json(out / f"{split_name}.summary.json", summary)
    return summary


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a written split (a convenience for tests and reports)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
