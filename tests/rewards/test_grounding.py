"""Grounding rewards (iou, giou, grounding_accuracy), the pixel-box helper and the optimal assignment.

Expected values are computed by hand in the comments (areas in the 0-1000 frame).
"""

import itertools
import random

import pytest

from cascade_rl.rewards import get_reward, normalize_box
from cascade_rl.rewards.assignment import max_weight_matching
from cascade_rl.rewards.grounding import MAX_BOXES, box_giou, box_iou, giou, grounding_accuracy, iou, valid_boxes

A = [0, 0, 100, 100]


def tagged(*boxes):
    return "<ref>the cat</ref><box>[" + ", ".join(str(list(b)) for b in boxes) + "]</box>"


# (completion, gold, expected iou, expected giou, expected accuracy at 0.5)
CASES = [
    (tagged(A), A, 1.0, 1.0, 1.0),
    # overlap 50x100 = 5000, union 15000, hull 150x100 = 15000 (no gap)
    (tagged(A), [50, 0, 150, 100], 1 / 3, 1 / 3, 0.0),
    # disjoint: IoU 0, union 20000, hull 300x100 = 30000: GIoU = -(30000 - 20000) / 30000
    (tagged(A), [200, 0, 300, 100], 0.0, -1 / 3, 0.0),
    # the gold is the lower half: 5000 / 10000, hull = union
    (tagged(A), [0, 0, 100, 50], 0.5, 0.5, 1.0),  # IoU exactly at the threshold counts
    # two golds, predicted in the other order: matched one-to-one
    (tagged([500, 500, 600, 600], A), [A, [500, 500, 600, 600]], 1.0, 1.0, 1.0),
    # one of two golds found: (1 + worst) / 2
    (tagged(A), [A, [500, 500, 600, 600]], 0.5, 0.0, 0.5),
    # an extra predicted box: (1 + worst) / 2
    (tagged(A, [300, 300, 400, 400]), A, 0.5, 0.0, 0.5),
    # a bare list, no tags
    ("The cat is at [100, 100, 200, 200].", [100, 100, 200, 200], 1.0, 1.0, 1.0),
    # a gold column stored as a string
    (tagged(A), "[[0, 0, 100, 100]]", 1.0, 1.0, 1.0),
    # malformed predictions are dropped: inverted, out of the frame, zero width, too few numbers, words
    (tagged([100, 200, 50, 300]), A, 0.0, -1.0, 0.0),
    (tagged([0, 0, 1001, 100]), A, 0.0, -1.0, 0.0),
    (tagged([-1, 0, 100, 100]), A, 0.0, -1.0, 0.0),
    (tagged([10, 10, 10, 50]), A, 0.0, -1.0, 0.0),
    ("<box>[[0, 0, 100]]</box>", A, 0.0, -1.0, 0.0),
    ("<box>[[nan, 0, 100, 100]]</box>", A, 0.0, -1.0, 0.0),
    ("I cannot find it.", A, 0.0, -1.0, 0.0),
    ("", A, 0.0, -1.0, 0.0),
    # a dropped box does not count as a prediction; the valid one matches
    (tagged(A, [5, 5, 1, 1]), A, 1.0, 1.0, 1.0),
    # floats
    (tagged([0, 0, 50.5, 100]), [0, 0, 101, 100], 0.5, 0.5, 1.0),
    # spamming boxes scores the worst value
    (tagged(*[A] * (MAX_BOXES + 1)), A, 0.0, -1.0, 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "want_iou", "want_giou", "want_acc"), CASES)
def test_grounding_cases(completion, gold, want_iou, want_giou, want_acc):
    assert iou([completion], bbox=[gold]) == [pytest.approx(want_iou)]
    assert giou([completion], bbox=[gold]) == [pytest.approx(want_giou)]
    assert grounding_accuracy([completion], bbox=[gold]) == [want_acc]


@pytest.mark.parametrize("gold", [[], [5, 5, 1, 1], "no box here", None, [[0, 0, 2000, 10]], [1, 2, 3]])
def test_invalid_gold_does_not_apply(gold):
    assert iou([tagged(A)], bbox=[gold]) == [None]
    assert giou([tagged(A)], bbox=[gold]) == [None]
    assert grounding_accuracy([tagged(A)], bbox=[gold]) == [None]


def test_accuracy_threshold():
    # IoU = 6000 / 10000 = 0.6
    assert grounding_accuracy([tagged(A)], bbox=[[0, 0, 100, 60]]) == [1.0]
    assert grounding_accuracy([tagged(A)], bbox=[[0, 0, 100, 60]], threshold=0.7) == [0.0]


def test_accuracy_matching_maximises_hits():
    # golds G1 = A, G2 = [0, 0, 100, 45]; preds P1 = A, P2 = [0, 0, 100, 50]
    # IoU: P1-G1 1.0, P1-G2 0.45, P2-G1 0.5, P2-G2 0.9: two hits (P1-G1, P2-G2)
    completion = tagged(A, [0, 0, 100, 50])
    assert grounding_accuracy([completion], bbox=[[A, [0, 0, 100, 45]]]) == [1.0]


def test_box_formulas():
    assert box_iou(A, [50, 50, 150, 150]) == pytest.approx(2500 / 17500)
    # hull 150x150 = 22500, union 17500
    assert box_giou(A, [50, 50, 150, 150]) == pytest.approx(2500 / 17500 - 5000 / 22500)


def test_valid_boxes_shapes():
    assert valid_boxes(A) == [[0.0, 0.0, 100.0, 100.0]]
    assert valid_boxes((A, [1, 1, 2, 2])) == [[0.0, 0.0, 100.0, 100.0], [1.0, 1.0, 2.0, 2.0]]
    assert valid_boxes([A, "junk", [3, 3, 1, 1]]) == [[0.0, 0.0, 100.0, 100.0]]


def test_normalize_box():
    assert normalize_box([64, 48, 320, 240], width=640, height=480) == [100, 100, 500, 500]
    # 1/640*1000 = 1.5625 -> 2; 639/640*1000 = 998.4 -> 998; 1/480*1000 = 2.08 -> 2; 479/480*1000 = 997.9 -> 998
    assert normalize_box([1, 1, 639, 479], width=640, height=480) == [2, 2, 998, 998]
    assert normalize_box([-5, 0, 700, 480], width=640, height=480) == [0, 0, 1000, 1000]  # clamped
    with pytest.raises(ValueError, match="positive"):
        normalize_box([0, 0, 1, 1], width=0, height=10)


def test_registered_by_name():
    for name in ("iou", "giou", "grounding_accuracy"):
        assert get_reward(name)([tagged(A)], bbox=[A]) == [1.0]


def test_assignment_beats_greedy():
    # greedy takes 0.9 then is left with 0.1 (1.0); the optimum pairs 0.8 + 0.85 = 1.65
    assert sorted(max_weight_matching([[0.9, 0.8], [0.85, 0.1]])) == [(0, 1), (1, 0)]


def test_assignment_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        n, m = rng.randint(1, 5), rng.randint(1, 5)
        weights = [[rng.choice([0.0, 0.5, rng.random(), -rng.random()]) for _ in range(m)] for _ in range(n)]
        k = min(n, m)
        best = max(
            sum(weights[r][c] for r, c in zip(rows, cols))
            for rows in itertools.combinations(range(n), k)
            for cols in itertools.permutations(range(m), k)
        )
        pairs = max_weight_matching(weights)
        assert len(pairs) == k
        assert len({r for r, _ in pairs}) == k and len({c for _, c in pairs}) == k
        assert sum(weights[r][c] for r, c in pairs) == pytest.approx(best)


def test_assignment_empty():
    assert max_weight_matching([]) == []
    assert max_weight_matching([[]]) == []
