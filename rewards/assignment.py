"""Optimal one-to-one assignment (Hungarian algorithm) for matching predicted boxes to gold boxes."""

from __future__ import annotations

__all__ = ["max_weight_matching"]


def max_weight_matching(weights: list[list[float]]) -> list[tuple[int, int]]:
    """Pairs ``(row, col)`` of a one-to-one matching that maximises the sum of ``weights[row][col]``.

    ``weights`` is an ``n x m`` matrix (any shape, rows may be empty); ``min(n, m)`` pairs are returned.
    O(min(n, m)^2 * max(n, m)): the shortest-augmenting-path Hungarian algorithm with potentials (Kuhn-Munkres as
    in Jonker-Volgenant), run on the transposed matrix when there are more rows than columns.

    >>> sorted(max_weight_matching([[0.9, 0.8], [0.85, 0.1]]))
    [(0, 1), (1, 0)]
    """
    if not weights or not weights[0]:
        return []
    transpose = len(weights) > len(weights[0])
    if transpose:
        weights = [list(col) for col in zip(*weights)]
    n, m = len(weights), len(weights[0])
    # 1-based arrays; cost = -weight turns the maximisation into the textbook minimisation.
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    match_of_col = [0] * (m + 1)  # row matched to each column, 0 = free
    way = [0] * (m + 1)
    for row in range(1, n + 1):
        match_of_col[0] = row
        col0 = 0
        min_to = [float("inf")] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[col0] = True
            row0, delta, col1 = match_of_col[col0], float("inf"), 0
            for col in range(1, m + 1):
                if not used[col]:
                    reduced = -weights[row0 - 1][col - 1] - u[row0] - v[col]
                    if reduced < min_to[col]:
                        min_to[col], way[col] = reduced, col0
                    if min_to[col] < delta:
                        delta, col1 = min_to[col], col
            for col in range(m + 1):
                if used[col]:
                    u[match_of_col[col]] += delta
                    v[col] -= delta
                else:
                    min_to[col] -= delta
            col0 = col1
            if match_of_col[col0] == 0:
                break
        while col0:  # flip the augmenting path
            prev = way[col0]
            match_of_col[col0] = match_of_col[prev]
            col0 = prev
    pairs = [(match_of_col[col] - 1, col - 1) for col in range(1, m + 1) if match_of_col[col]]
    return [(c, r) for r, c in pairs] if transpose else pairs
