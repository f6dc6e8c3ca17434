"""The linear assignment problem (Kuhn 1955, Munkres 1957), in NumPy.

Given a cost matrix ``C`` [R, K], choose ``min(R, K)`` entries, no two in the same row or
column, of least total cost. Clustering accuracy uses it to match clusters to classes one to
one (maximising the matched counts is minimising their negation).

The solver is the shortest-augmenting-path form of the Hungarian algorithm (as in Jonker &
Volgenant 1987): rows are added one at a time; for each, a Dijkstra-like search over columns
with reduced costs ``C[i, j] - u[i] - v[j]`` finds the cheapest augmenting path, and the dual
potentials ``u``, ``v`` are updated so that reduced costs stay non-negative and are zero on
the matching. That is O(R^2 K) for R <= K, with the inner loop over columns vectorised (a
wide matrix is solved as is, a tall one through its transpose).
"""

from __future__ import annotations

import numpy as np


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, columns)``: the pairs of a minimum-cost one-to-one matching of the rows and
    columns of ``cost`` [R, K], ``min(R, K)`` of them, sorted by row (as SciPy's function
    of the same name returns them). Costs must be finite."""
    matrix = np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"the cost must be a matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("the cost matrix must be finite")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if matrix.shape[0] > matrix.shape[1]:
        columns, rows = _solve_wide(matrix.T)
        order = np.argsort(rows)
        return rows[order], columns[order]
    return _solve_wide(matrix)


def _solve_wide(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The matching for ``cost`` [R, K] with R <= K: every row gets a column."""
    count_rows, count_columns = cost.shape
    # Index 0 of the column arrays is a virtual column holding the row being added.
    row_potential = np.zeros(count_rows + 1)
    column_potential = np.zeros(count_columns + 1)
    row_of_column = np.zeros(count_columns + 1, dtype=np.int64)  # 1-based row, 0 = free
    previous_column = np.zeros(count_columns + 1, dtype=np.int64)
    padded = np.zeros((count_rows + 1, count_columns + 1))
    padded[1:, 1:] = cost
    for row in range(1, count_rows + 1):
        row_of_column[0] = row
        column = 0
        shortest = np.full(count_columns + 1, np.inf)
        visited = np.zeros(count_columns + 1, dtype=bool)
        while True:
            visited[column] = True
            current_row = row_of_column[column]
            # reduced costs of reaching every unvisited column through current_row
            reduced = padded[current_row] - row_potential[current_row] - column_potential
            better = ~visited & (reduced < shortest)
            shortest[better] = reduced[better]
            previous_column[better] = column
            candidates = np.where(visited, np.inf, shortest)
            next_column = int(np.argmin(candidates[1:])) + 1
            delta = candidates[next_column]
            row_potential[row_of_column[visited]] += delta
            column_potential[visited] -= delta
            shortest[~visited] -= delta
            column = next_column
            if row_of_column[column] == 0:
                break
        while column != 0:  # flip the augmenting path
            before = previous_column[column]
            row_of_column[column] = row_of_column[before]
            column = before
    matched = np.nonzero(row_of_column[1:])[0]
    rows = row_of_column[1:][matched] - 1
    order = np.argsort(rows)
    return rows[order].astype(np.int64), matched[order].astype(np.int64)
