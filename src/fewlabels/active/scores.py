"""Acquisition scores: how much an image's label is worth asking for, from the classifier's
class probabilities. Higher is always more worth asking.

Every function takes a probability table: ``[N, C]`` (one distribution per pool image) for
the uncertainty scores, ``[S, N, C]`` (S Monte-Carlo dropout samples or S committee members)
for the disagreement scores, and returns one score per image, float32 ``[N]``.
Entropies are in nats; ``0 log 0`` counts as 0.

Sources: Settles 2009, "Active Learning Literature Survey" (least confidence, margin,
entropy, query by committee's vote entropy and KL divergence to the consensus, after Dagan &
Engelson 1995 and McCallum & Nigam 1998); Houlsby, Huszár, Ghahramani & Lengyel 2011,
"Bayesian Active Learning for Classification and Preference Learning" (BALD) with Gal,
Islam & Ghahramani 2017, "Deep Bayesian Active Learning with Image Data" (BALD with
Monte-Carlo dropout samples).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Samples x images x classes of one chunk of BALD's work (16 M floats: 64 MB).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _table(probabilities: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    if probabilities.ndim != ndim:
        wanted = "[N, C]" if ndim == 2 else "[S, N, C]"
        raise ValueError(f"{name} wants probabilities {wanted}, got {tuple(probabilities.shape)}")
    return probabilities.float()


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """``-sum_c p_c log p_c`` over the last dimension, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)


def least_confidence(probabilities: torch.Tensor) -> torch.Tensor:
    """Least confidence: ``1 - max_c p(c | x)``.

    The probability that the most likely class is wrong (Settles 2009, section 3.1; Lewis &
    Gale 1994 used the uncertainty of a binary classifier).
    """
    return 1.0 - _table(probabilities, 2, "least_confidence").max(dim=1).values


def margin(probabilities: torch.Tensor) -> torch.Tensor:
    """Margin: ``-(p(c1 | x) - p(c2 | x))`` with ``c1``, ``c2`` the two most probable classes.

    A small margin between the best two classes is a hard decision (Scheffer, Decomain &
    Wrobel 2001; Settles 2009, section 3.1). Negated so that higher is more uncertain; with a
    single class the margin is the probability itself.
    """
    table = _table(probabilities, 2, "margin")
    if table.shape[1] < 2:
        return -table[:, 0]
    best_two = table.topk(2, dim=1).values
    return best_two[:, 1] - best_two[:, 0]


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Predictive entropy: ``H[p(y | x)] = -sum_c p(c | x) log p(c | x)`` (Shannon 1948; as an
    acquisition score, Settles 2009, section 3.1)."""
    return _entropy(_table(probabilities, 2, "entropy"))


def bald(samples: torch.Tensor) -> torch.Tensor:
    """BALD, the mutual information between an image's label and the model's parameters:

    ``I[y; w | x] = H[mean_s p_s(y | x)] - mean_s H[p_s(y | x)]``

    with ``p_s`` the S Monte-Carlo samples ``[S, N, C]`` of the predictive distribution
    (Houlsby et al. 2011, eq. 3; Gal, Islam & Ghahramani 2017, eq. 4 with MC dropout). High
    when the samples are each confident but disagree: uncertainty a label would resolve,
    not noise in the data. Clamped at 0 against rounding.
    """
    table = _table(samples, 3, "bald")
    mean_entropy = _entropy(table).mean(dim=0)
    return (_entropy(table.mean(dim=0)) - mean_entropy).clamp_min(0.0)


def vote_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Vote entropy of a committee: ``-sum_c (V(c)/S) log (V(c)/S)``, ``V(c)`` the number of
    the S members ``[S, N, C]`` whose most probable class is ``c`` (Dagan & Engelson 1995;
    Settles 2009, eq. 3.3). A member's ties go to the lowest class index."""
    table = _table(samples, 3, "vote_entropy")
    members, _, classes = table.shape
    votes = torch.nn.functional.one_hot(table.argmax(dim=2), classes).sum(dim=0)  # [N, C]
    return _entropy(votes.float() / members)


def mean_kl_to_consensus(samples: torch.Tensor) -> torch.Tensor:
    """Mean KL divergence of the committee members to their consensus:
    ``(1/S) sum_s KL(p_s || p_mean)``, ``p_mean = (1/S) sum_s p_s`` (McCallum & Nigam 1998;
    Settles 2009, eq. 3.4). Expanding the logarithms shows it equals :func:`bald`'s
    ``H[p_mean] - mean_s H[p_s]`` for the same samples; it is kept under the committee's name."""
    table = _table(samples, 3, "mean_kl_to_consensus")
    consensus = table.mean(dim=0, keepdim=True)  # [1, N, C]
    # sum_c p log p - p log q, with 0 log 0 = 0 and the consensus > 0 wherever p > 0
    divergence = (torch.special.xlogy(table, table)
                  - torch.special.xlogy(table, consensus.expand_as(table))).sum(dim=2)
    return divergence.mean(dim=0).clamp_min(0.0)


SampleSource = Callable[[int, int], torch.Tensor]


def chunked_disagreement(
    score: Callable[[torch.Tensor], torch.Tensor],
    sample_source: SampleSource,
    count: int,
    *,
    samples: int,
    classes: int,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """A disagreement score (:func:`bald`, :func:`vote_entropy`, ...) over ``count`` images
    whose samples are made chunk by chunk: ``sample_source(start, stop)`` returns the
    ``[samples, stop - start, classes]`` probabilities of images ``start..stop-1``. A chunk
    holds at most ``chunk_elements`` sample values (at least one image), so memory stays
    bounded however large the pool is (baal-org/baal#6 ran out of memory here). Every score
    is per image, so the result does not depend on the chunk size."""
    per_chunk = max(1, chunk_elements // max(1, samples * classes))
    scores = torch.empty(count)
    for start in range(0, count, per_chunk):
        stop = min(count, start + per_chunk)
        scores[start:stop] = score(sample_source(start, stop))
    return scores
