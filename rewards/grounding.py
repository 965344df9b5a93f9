"""Grounding rewards: ``iou``, ``giou`` and ``grounding_accuracy`` on InternVL's 0-1000 box frame.

Gold boxes come in column ``bbox``: one ``[x1, y1, x2, y2]`` or a list of them (a JSON string of either is
accepted too), already normalised to 0-1000 (``normalize_box`` converts pixel boxes). Predicted boxes are every
``[x1, y1, x2, y2]`` inside ``<box>...</box>`` tags, or anywhere in the completion when there is no tag.

A box is kept only if its four numbers are finite, inside [0, 1000] and strictly ordered (x1 < x2, y1 < y2);
anything else is dropped, never raised. Several boxes are matched one-to-one by optimal assignment, and the score
is the sum over matched pairs divided by max(#predicted, #gold): a missing or an extra box counts as the worst
value (0 for IoU and accuracy, -1 for GIoU). No valid predicted box gives that worst value; a gold column without a
valid box gives None (does not apply). More than ``MAX_BOXES`` predicted boxes also gives the worst value, which
bounds the assignment's cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .assignment import max_weight_matching
from .contract import in_process
from .parsing import parse_boxes

__all__ = [
    "iou",
    "giou",
    "grounding_accuracy",
    "box_iou",
    "box_giou",
    "normalize_box",
    "valid_box",
    "valid_boxes",
    "MAX_BOXES",
]

FRAME = 1000.0
MAX_BOXES = 100

Box = Sequence[float]


def normalize_box(box: Box, width: float, height: float) -> list[int]:
    """A pixel box ``[x1, y1, x2, y2]`` on a ``width x height`` image in InternVL's 0-1000 frame.

    Each coordinate is ``round(v / W * 1000)`` (x) or ``round(v / H * 1000)`` (y), clamped to [0, 1000].

    >>> normalize_box([64, 48, 320, 240], width=640, height=480)
    [100, 100, 500, 500]
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    x1, y1, x2, y2 = box
    scaled = (x1 / width, y1 / height, x2 / width, y2 / height)
    return [min(1000, max(0, round(v * FRAME))) for v in scaled]


def valid_box(box: object) -> list[float] | None:
    """``box`` as four floats if it is a finite, strictly ordered box inside [0, 1000], else None."""
    try:
        numbers = [float(v) for v in box]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(numbers) != 4 or not all(math.isfinite(v) and 0.0 <= v <= FRAME for v in numbers):
        return None
    x1, y1, x2, y2 = numbers
    return numbers if x1 < x2 and y1 < y2 else None


def valid_boxes(value: object) -> list[list[float]]:
    """The valid boxes in a gold value: one box, a list of boxes, or a string holding either."""
    if isinstance(value, str):
        return [b for b in map(valid_box, parse_boxes(value)) if b is not None]
    if hasattr(value, "tolist"):  # numpy arrays, tensors
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        return []
    if all(isinstance(v, (int, float)) for v in value):
        value = [value]
    return [b for b in map(valid_box, value) if b is not None]


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two valid boxes.

    >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])  # overlap 50, union 150
    0.3333333333333333
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    return inter / (_area(a) + _area(b) - inter)


def box_giou(a: Box, b: Box) -> float:
    """Generalised IoU (Rezatofighi et al., 2019): IoU - (hull - union) / hull, in [-1, 1].

    >>> box_giou([0, 0, 10, 10], [20, 0, 30, 10])  # IoU 0, union 200, hull 300
    -0.3333333333333333
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = _area(a) + _area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _matched_score(
    completion: str, gold: object, pair_value: Callable[[Box, Box], float], worst: float
) -> float | None:
    golds = valid_boxes(gold)
    if not golds:
        return None
    predicted = [b for b in map(valid_box, parse_boxes(completion)) if b is not None]
    if not predicted or len(predicted) > MAX_BOXES:
        return worst
    values = [[pair_value(p, g) for g in golds] for p in predicted]
    pairs = max_weight_matching(values)
    unmatched = max(len(predicted), len(golds)) - len(pairs)
    return (sum(values[p][g] for p, g in pairs) + worst * unmatched) / max(len(predicted), len(golds))


@in_process
def iou(completions: list[str], bbox: list[object], **_: object) -> list[float | None]:
    """Mean IoU of optimally matched boxes over max(#predicted, #gold), in [0, 1] (column ``bbox``).

    >>> iou(["<ref>dog</ref><box>[[0, 0, 10, 10]]</box>"], bbox=[[5, 0, 15, 10]])
    [0.3333333333333333]
    """
    return [_matched_score(c, g, box_iou, 0.0) for c, g in zip(completions, bbox, strict=True)]


@in_process
def giou(completions: list[str], bbox: list[object], **_: object) -> list[float | None]:
    """Mean GIoU of optimally matched boxes over max(#predicted, #gold), in [-1, 1] (column ``bbox``)."""
    return [_matched_score(c, g, box_giou, -1.0) for c, g in zip(completions, bbox, strict=True)]


@in_process
def grounding_accuracy(
    completions: list[str], bbox: list[object], threshold: float = 0.5, **_: object
) -> list[float | None]:
    """Fraction of boxes matched with IoU >= ``threshold`` (default 0.5), over max(#predicted, #gold).

    The matching maximises the number of hits, so one box each gives 1.0 or 0.0.

    >>> grounding_accuracy(["[0, 0, 10, 10]", "[0, 0, 10, 10]"], bbox=[[0, 0, 10, 12], [5, 0, 15, 10]])
    [1.0, 0.0]
    """

    def hit(p: Box, g: Box) -> float:
        return 1.0 if box_iou(p, g) >= threshold else 0.0

    return [_matched_score(c, g, hit, 0.0) for c, g in zip(completions, bbox, strict=True)]
