"""The ``click`` reward for GUI grounding: is the predicted point inside the gold box?"""

from __future__ import annotations

from .contract import in_process
from .grounding import valid_box, valid_boxes
from .parsing import parse_boxes, parse_points

__all__ = ["click", "predicted_point"]


def predicted_point(completion: str) -> tuple[float, float] | None:
    """The last point of a completion, in the 0-1000 frame, or None.

    Looked for in this order: ``<point>[[x, y]]</point>``; the centre of the last valid predicted box
    (``<box>[[x1, y1, x2, y2]]</box>`` or a bare ``[x1, y1, x2, y2]``); a bare ``(x, y)``. Points outside
    [0, 1000] are dropped.

    >>> predicted_point("<box>[[100, 200, 300, 400]]</box>")
    (200.0, 300.0)
    """
    boxes = [b for b in map(valid_box, parse_boxes(completion)) if b is not None]
    tagged = "<point>" in completion
    points = parse_points(completion) if tagged or not boxes else []
    points = [p for p in points if all(0.0 <= v <= 1000.0 for v in p)]
    if points:
        return points[-1][0], points[-1][1]
    if boxes:
        x1, y1, x2, y2 = boxes[-1]
        return (x1 + x2) / 2, (y1 + y2) / 2
    return None


@in_process
def click(completions: list[str], bbox: list[object], **_: object) -> list[float | None]:
    """1.0 if the predicted point lies inside (or on the edge of) a gold box, else 0.0; None without a valid gold.

    >>> click(["<point>[[150, 150]]</point>", "(50, 50)"], bbox=[[100, 100, 200, 200], [100, 100, 200, 200]])
    [1.0, 0.0]
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, bbox, strict=True):
        golds = valid_boxes(gold)
        if not golds:
            scores.append(None)
            continue
        point = predicted_point(completion)
        inside = point is not None and any(g[0] <= point[0] <= g[2] and g[1] <= point[1] <= g[3] for g in golds)
        scores.append(1.0 if inside else 0.0)
    return scores
