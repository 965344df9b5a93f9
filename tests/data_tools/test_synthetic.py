"""The synthetic shapes task: determinism, pixels that match the stated answers, and the file formats readers need."""

import pytest
from PIL import Image

from cascade_rl.data import read_prompts
from cascade_rl.data_tools.synthetic import (
    PALETTE,
    ShapesTask,
    make_example,
    painted_box,
    read_rows,
    write_synthetic_dataset,
)
from cascade_rl.rewards.grounding import iou
from cascade_rl.rewards.math_reward import math_reward

HARD = dict(
    grid=4,
    shapes=("square", "circle", "triangle"),
    colours=("red", "green", "blue"),
    jitter=1,
    max_count=4,
    max_distractors=5,
)


def pixel_box(bbox: list[int], size: int) -> tuple[int, int, int, int]:
    """Invert round(v / size · 1000): with size ≤ 1000 one frame unit is < 1 px, so rounding recovers v exactly."""
    return tuple(round(v * size / 1000) for v in bbox)


def test_same_seed_same_bytes_and_row_i_does_not_depend_on_n(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 12, seed=3, split_name="train", **HARD)
    write_synthetic_dataset(tmp_path / "b", 12, seed=3, split_name="train", **HARD)
    short = write_synthetic_dataset(tmp_path / "c", 5, seed=3, split_name="train", **HARD)
    other = write_synthetic_dataset(tmp_path / "d", 12, seed=4, split_name="train", **HARD)
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()
    for i in range(12):
        name = f"images/train-{i:05d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert read_rows(short["path"]) == read_rows(a["path"])[:5]
    assert read_rows(other["path"]) != read_rows(a["path"])


def test_locate_boxes_are_the_tight_box_of_the_target_pixels(tmp_path):
    summary = write_synthetic_dataset(tmp_path, 40, seed=0, split_name="val", kinds=("locate",), **HARD)
    task = ShapesTask(**HARD)
    for row in read_rows(summary["path"]):
        image = Image.open(tmp_path / row["image"]).convert("RGB")
        colour = PALETTE[row["question"].split()[3]]  # "Where is the <colour> <shape>?"
        x1, y1, x2, y2 = pixel_box(row["bbox"], task.image_size)
        # Only the target's cell: other objects of the same colour (other shapes) sit in other cells.
        cx, cy = (x1 + x2) // 2 // task.cell * task.cell, (y1 + y2) // 2 // task.cell * task.cell
        hits = [
            (x, y)
            for x in range(cx, cx + task.cell)
            for y in range(cy, cy + task.cell)
            if image.getpixel((x, y)) == colour
        ]
        xs, ys = [x for x, _ in hits], [y for _, y in hits]
        assert (min(xs), min(ys), max(xs) + 1, max(ys) + 1) == (x1, y1, x2, y2), row["id"]


def test_defaults_are_the_demo_task():
    task = ShapesTask()
    assert (task.grid, task.colours, task.max_count, task.max_distractors) == (2, ("red", "blue"), 2, 2)
    # A 64-px image split 2 × 2: 32-px cells; with margin 2 every object is 28 px wide, 7/16 of the frame.
    example = make_example(task, "locate", seed=0, index=0)
    x1, y1, x2, y2 = example.bbox
    assert x2 - x1 == y2 - y1 == 969 - 531 and x1 in (31, 531) and y1 in (31, 531)


def test_a_square_box_by_hand():
    # Cell (row 1, col 2) of a 64-px, 4 × 4 grid with margin 2: x from 2·16 + 2 = 34 to 3·16 − 2 = 46 (exclusive),
    # y from 18 to 30. In the 0–1000 frame: 34/64·1000 = 531.25 → 531, 18 → 281.25 → 281, 46 → 718.75 → 719,
    # 30 → 468.75 → 469.
    from cascade_rl.rewards.grounding import normalize_box

    assert painted_box("square", (34, 18, 46, 30)) == (34, 18, 46, 30)
    assert normalize_box((34, 18, 46, 30), 64, 64) == [531, 281, 719, 469]


def shape_of(image: Image.Image, colour, box) -> str:
    """Tell a shape by how much of its box it fills: square 1, circle ≈ π/4 ≈ 0.79, triangle ≈ 1/2."""
    x1, y1, x2, y2 = box
    filled = sum(image.getpixel((x, y)) == colour for x in range(x1, x2) for y in range(y1, y2))
    fraction = filled / ((x2 - x1) * (y2 - y1))
    return "square" if fraction > 0.9 else "circle" if fraction > 0.65 else "triangle"


def test_count_answers_match_the_painted_objects(tmp_path):
    summary = write_synthetic_dataset(tmp_path, 60, seed=1, split_name="val", kinds=("count",), **HARD)
    task = ShapesTask(**HARD)
    seen = set()
    for row in read_rows(summary["path"]):
        image = Image.open(tmp_path / row["image"]).convert("RGB")
        _, _, colour_name, shapes, *_ = row["question"].split()  # "How many <colour> <shape>s are there?"
        colour, wanted = PALETTE[colour_name], shapes[:-1]
        count = 0
        for cell in range(task.grid**2):
            r, c = divmod(cell, task.grid)
            region = (c * task.cell, r * task.cell, (c + 1) * task.cell, (r + 1) * task.cell)
            box = Image.eval(image.crop(region), lambda v: 255 - v).convert("L").getbbox()  # non-white pixels
            if box is None:
                continue
            box = (region[0] + box[0], region[1] + box[1], region[0] + box[2], region[1] + box[3])
            centre = ((box[0] + box[2]) // 2, (box[1] + box[3] - 1) // 2 + 1)  # inside every shape, apex up too
            if image.getpixel(centre) == colour and shape_of(image, colour, box) == wanted:
                count += 1
        assert str(count) == row["answer"], row["id"]
        seen.add(row["answer"])
    assert seen == {"0", "1", "2", "3", "4"}  # 60 rows cover every count 0..max_count


def test_rows_read_as_prompts_and_the_targets_score_full_marks(tmp_path):
    summary = write_synthetic_dataset(tmp_path, 6, seed=0, split_name="test")
    rows, read = read_prompts(summary["path"], tmp_path)
    assert read.n_kept == 6 and [r.extra["kind"] for r in rows] == ["count", "locate"] * 3
    responses = [r.extra["response"] for r in rows]
    answers, boxes = [r.answer for r in rows], [r.extra["bbox"] for r in rows]
    # Each row's own reward gives its target full marks; the other reward does not apply (None).
    assert math_reward(responses, answer=answers) == [1.0, None] * 3
    assert iou(responses, bbox=boxes) == [None, 1.0] * 3
    assert all(r.startswith("Answer: \\boxed{") for r in responses[::2])
    assert all(r.startswith("<ref>") and r.endswith("]]</box>") for r in responses[1::2])


def test_examples_use_only_the_chosen_colours_and_counts():
    task = ShapesTask(colours=("red", "blue"), max_count=2, max_distractors=1)
    for i in range(50):
        example = make_example(task, "count", seed=9, index=i)
        assert 0 <= int(example.answer) <= 2
        assert {o.colour for o in example.objects} <= {"red", "blue"}
        assert len(example.objects) <= 3


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"colours": ("teal",)}, "unknown colours"),
        ({"colours": ("red",)}, "at least 2"),
        ({"max_count": 3, "max_distractors": 2}, "fit in the 4 cells"),
        ({"image_size": 32, "grid": 4, "margin": 3}, "≥ 3 px"),
    ],
)
def test_bad_knobs_are_refused_with_the_reason(knobs, message):
    with pytest.raises(ValueError, match=message):
        ShapesTask(**knobs)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one or more of"):
        write_synthetic_dataset(tmp_path, 2, seed=0, kinds=("colour",))


def test_a_sloppy_teacher_counts_every_object_of_the_shape_and_leaves_the_scene_and_the_answer_alone(tmp_path):
    clean = write_synthetic_dataset(tmp_path / "clean", 60, seed=5, split_name="sft", kinds=("count",))
    sloppy = write_synthetic_dataset(
        tmp_path / "sloppy", 60, seed=5, split_name="sft", kinds=("count",), teacher_error=1
    )
    task = ShapesTask()
    for a, b in zip(read_rows(clean["path"]), read_rows(sloppy["path"])):
        assert a["answer"] == b["answer"] and a["question"] == b["question"], a["id"]
        assert (tmp_path / "clean" / a["image"]).read_bytes() == (tmp_path / "sloppy" / b["image"]).read_bytes()
        assert a["response"] == f"Answer: \\boxed{{{a['answer']}}}"
        # Counted from the pixels: the default task paints only squares, one per non-white 32-px cell.
        image = Image.open(tmp_path / "sloppy" / b["image"]).convert("RGB")
        cells = [
            (c * task.cell, r * task.cell, (c + 1) * task.cell, (r + 1) * task.cell) for r in (0, 1) for c in (0, 1)
        ]
        squares = sum(Image.eval(image.crop(box), lambda v: 255 - v).getbbox() is not None for box in cells)
        assert b["response"] == f"Answer: \\boxed{{{squares}}}", b["id"]
    # Wrong exactly where squares of the other colour are present; the summary counts those rows.
    wrong = sum(a["response"] != b["response"] for a, b in zip(read_rows(clean["path"]), read_rows(sloppy["path"])))
    assert sloppy["wrong_responses"] == wrong > 0 and clean["wrong_responses"] == 0


def test_the_teacher_errs_on_about_the_asked_share_of_rows(tmp_path):
    half = write_synthetic_dataset(tmp_path, 400, seed=1, split_name="sft", kinds=("count",), teacher_error=0.5)
    # Sloppy on ~200 rows, of which those with a square of the other colour (0-2 distractors, uniform: 2/3) are
    # wrong: ~133 expected; binomial(400, 1/3) has a std of ~9.4, so ±40 is more than 4 std.
    assert 93 <= half["wrong_responses"] <= 173


def test_a_teacher_error_outside_0_1_is_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_error is a probability"):
        write_synthetic_dataset(tmp_path, 2, seed=0, teacher_error=1.5)


def test_asked_colours_limit_the_questions_not_the_scene():
    task = ShapesTask(asked_colours=("red",))
    examples = [make_example(task, "count", seed=2, index=i) for i in range(60)]
    assert {e.question for e in examples} == {"How many red squares are there?"}
    assert any(o.colour == "blue" for e in examples for o in e.objects)  # blue squares still appear, as distractors
    for e in examples:
        assert e.answer == str(sum(o.colour == "red" for o in e.objects))
    with pytest.raises(ValueError, match="asked_colours"):
        ShapesTask(asked_colours=("green",))
