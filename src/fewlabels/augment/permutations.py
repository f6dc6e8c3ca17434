"""The jigsaw puzzle's permutation set, chosen greedily for large Hamming distance.

Noroozi & Favaro ("Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016) classify which of a fixed set of permutations
shuffled the tiles, and found that the farther apart the permutations of the set, the
better the features transfer: with permutations close to each other the network can tell
them apart from one or two tiles, without looking at the rest. Their Algorithm 1 adds, one at
a time, the permutation of the 9! with the largest *average* Hamming distance to those
chosen. :func:`select_permutations` instead maximises the *minimum* distance (farthest-point
selection: every step takes a permutation whose nearest chosen one is as far as possible), so
the number that bounds the shortcut, the set's minimum distance, is as large as the greedy
choice can make it; ties are broken by the paper's criterion (the larger total distance to
those chosen), then at random from the seed. The same seed gives the same set on every
machine (NumPy's PCG64).

Hamming distance between two orderings = the number of positions holding different tiles.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from torch import Tensor

from fewlabels.errors import UserError

# 10! = 3.6M candidates of 10 bytes is the most this exhaustive search holds comfortably.
MAX_ITEMS = 10


@lru_cache(maxsize=2)
def all_permutations(items: int) -> np.ndarray:
    """Every ordering of ``0..items-1`` in lexicographic order, uint8 ``[items!, items]``
    (read-only: cached)."""
    if not 1 <= items <= MAX_ITEMS:
        raise ValueError(f"items must be in 1..{MAX_ITEMS}, got {items}")
    table = np.array(list(itertools.permutations(range(items))), dtype=np.uint8)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=2)
def _placements(items: int) -> np.ndarray:
    """uint8 ``[items * items, items!]``: row ``t * items + k`` is 1 where a candidate puts
    tile ``k`` at position ``t``. A candidate's agreements with one ordering are then the sum
    of ``items`` contiguous rows, several times faster than comparing every candidate."""
    candidates = all_permutations(items)
    table = np.zeros((items * items, len(candidates)), dtype=np.uint8)
    rows = np.arange(items) * items + candidates  # [items!, items]
    table[rows, np.arange(len(candidates))[:, None]] = 1
    table.setflags(write=False)
    return table


def hamming_distances(orders: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Hamming distance of every row of ``orders`` ``[M, n]`` to ``order`` ``[n]``: ``[M]``."""
    return np.count_nonzero(orders != order, axis=1).astype(np.int64)


def _distances_to(items: int, order: np.ndarray) -> np.ndarray:
    """Hamming distance of every candidate of :func:`all_permutations` to ``order``."""
    rows = np.arange(items) * items + order
    return items - _placements(items)[rows].sum(axis=0, dtype=np.int64)


def select_permutations(count: int, items: int = 9, seed: int = 0) -> np.ndarray:
    """``count`` permutations of ``0..items-1`` chosen greedily for a large minimum Hamming
    distance (see the module docstring): int64 ``[count, items]``, no two alike.

    The first is drawn uniformly from the seed; each next one maximises its distance to the
    nearest chosen one, ties broken by the largest summed distance to the chosen ones, then
    uniformly from the seed. Costs one pass over the ``items!`` candidates per permutation
    (about 5 ms each for 9 items).
    """
    total = math.factorial(items) if 1 <= items <= MAX_ITEMS else 0
    if not 2 <= count <= total:
        raise UserError(f"the permutation set needs between 2 and {total} permutations of "
                        f"{items} tiles, got {count}; choose another number of permutations")
    candidates = all_permutations(items)  # [items!, items]
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(candidates)))]
    nearest = _distances_to(items, candidates[chosen[0]])  # to the closest chosen
    summed = nearest.copy()  # to all chosen: the paper's criterion, used to break ties
    for _ in range(count - 1):
        tied = np.flatnonzero(nearest == nearest.max())
        tied = tied[summed[tied] == summed[tied].max()]
        pick = int(tied[rng.integers(len(tied))])
        chosen.append(pick)
        distances = _distances_to(items, candidates[pick])
        np.minimum(nearest, distances, out=nearest)  # the chosen ones drop to 0
        summed += distances
    return candidates[chosen].astype(np.int64)


def pairwise_hamming(orders: Tensor | np.ndarray) -> np.ndarray:
    """Hamming distances between all rows of ``orders`` ``[P, n]``: int64 ``[P, P]``."""
    table = np.asarray(orders)
    return np.count_nonzero(table[:, None, :] != table[None, :, :], axis=2).astype(np.int64)


def minimum_hamming_distance(orders: Tensor | np.ndarray) -> int:
    """The smallest Hamming distance between two different rows of ``orders``."""
    distances = pairwise_hamming(orders)
    np.fill_diagonal(distances, np.iinfo(np.int64).max)
    return int(distances.min())


def mean_hamming_distance(orders: Tensor | np.ndarray) -> float:
    """The average Hamming distance over pairs of different rows (the paper reports it beside
    the minimum)."""
    distances = pairwise_hamming(orders)
    pairs = len(distances) * (len(distances) - 1)
    return float(distances.sum() / pairs)


def apply_orders(items: Tensor, orders: Tensor) -> Tensor:
    """Reorder dimension 1 of ``items`` ``[N, T, ...]`` image by image: position ``t`` of
    image ``i`` receives ``items[i, orders[i, t]]``. ``orders`` is int64 ``[N, T]``.

    Works on tiles ``[N, T, C, s, s]`` as on their positions ``[N, T, 2]``: shuffling the
    positions before cutting gives the shuffled tiles without moving pixels twice.
    """
    index = orders.to(items.device).view(*orders.shape, *([1] * (items.dim() - 2)))
    return items.gather(1, index.expand(*orders.shape, *items.shape[2:]))


def inverse_orders(orders: Tensor) -> Tensor:
    """The inverse of each row of ``orders`` ``[N, T]``: ``apply_orders`` by it undoes
    ``apply_orders`` by ``orders``."""
    return orders.argsort(dim=1)
