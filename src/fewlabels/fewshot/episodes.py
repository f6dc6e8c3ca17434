"""N-way K-shot episodes: which images form each episode's support and query sets.

An episode draws ``ways`` classes, then ``shots`` support and ``queries`` query images of each
class, without replacement (support and query never share an image). Episodes are index
tables into an image set (or into the feature matrix extracted from it), so evaluating one is
index arithmetic: ``features[episodes.support]`` is ``[E, N, K, D]``.

Within an episode, class ``episodes.classes[e, n]`` has label ``n``. Classes are drawn in a
random order (a ``randperm``), never sorted, so which class gets which label carries no
information (MAML-Pytorch#8: sorting with ``np.unique`` biased it). Draws come from a CPU
``torch.Generator``: the same seed gives the same episodes on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewlabels.errors import UserError


@dataclass
class Episodes:
    """``E`` episodes: dataset class of each label ``[E, N]``, support ``[E, N, K]`` and query
    ``[E, N, Q]`` indices into the image set they were drawn from."""

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor

    def __len__(self) -> int:
        return self.classes.shape[0]

    @property
    def ways(self) -> int:
        return self.classes.shape[1]

    @property
    def shots(self) -> int:
        return self.support.shape[2]

    @property
    def queries(self) -> int:
        return self.query.shape[2]

    def support_labels(self) -> torch.Tensor:
        """Episode labels of the flattened support set ``[N·K]``: 0,0,..,1,1,..."""
        return torch.arange(self.ways).repeat_interleave(self.shots)

    def query_labels(self) -> torch.Tensor:
        """Episode labels of the flattened query set ``[N·Q]``."""
        return torch.arange(self.ways).repeat_interleave(self.queries)

    def chunk(self, start: int, stop: int) -> Episodes:
        return Episodes(self.classes[start:stop], self.support[start:stop],
                        self.query[start:stop])

    def fingerprint(self) -> str:
        """SHA-256 of the index tables (first 16 hex digits): two results with the same
        fingerprint were measured on the same episodes."""
        digest = hashlib.sha256()
        for table in (self.classes, self.support, self.query):
            digest.update(str(tuple(table.shape)).encode())
            digest.update(table.to(torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


class EpisodeSampler:
    """Draws episodes of ``ways`` classes among ``classes`` with ``shots`` + ``queries``
    images each, from an image set's ``labels``. Refuses (one line) what cannot be drawn."""

    def __init__(self, labels: torch.Tensor, classes: Sequence[int], ways: int, shots: int,
                 queries: int, *, what: str = "novel") -> None:
        if ways < 2:
            raise UserError(f"--ways must be at least 2, got {ways}")
        if ways > len(classes):
            raise UserError(f"--ways {ways} is more than the {len(classes)} {what} classes; "
                            f"give --ways {len(classes)} or fewer (or more {what} classes)")
        if shots < 1 or queries < 1:
            raise UserError("--shots and --queries must be at least 1")
        self.classes = torch.as_tensor(list(classes), dtype=torch.long)
        self.members = [torch.nonzero(labels == label).flatten() for label in classes]
        smallest = min(len(members) for members in self.members)
        if shots + queries > smallest:
            small = int(self.classes[min(range(len(self.members)),
                                         key=lambda i: len(self.members[i]))])
            raise UserError(f"--shots {shots} + --queries {queries} is more than the {smallest} "
                            f"images of {what} class {small}; lower them to {smallest} in all")
        self.ways, self.shots, self.queries = ways, shots, queries

    def sample(self, count: int, generator: torch.Generator) -> Episodes:
        """``count`` episodes drawn with ``generator`` (a CPU generator)."""
        per_class = self.shots + self.queries
        classes = torch.empty(count, self.ways, dtype=torch.long)
        picks = torch.empty(count, self.ways, per_class, dtype=torch.long)
        for episode in range(count):
            chosen = torch.randperm(len(self.classes), generator=generator)[:self.ways]
            classes[episode] = chosen
            for way, position in enumerate(chosen.tolist()):
                members = self.members[position]
                order = torch.randperm(len(members), generator=generator)[:per_class]
                picks[episode, way] = members[order]
        return Episodes(self.classes[classes], picks[..., :self.shots].clone(),
                        picks[..., self.shots:].clone())


def sample_episodes(labels: torch.Tensor, classes: Sequence[int], *, ways: int, shots: int,
                    queries: int, episodes: int, seed: int) -> Episodes:
    """``episodes`` N-way K-shot episodes on ``classes`` of an image set with ``labels``,
    drawn from ``seed``: the same seed gives the same episodes on every machine."""
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    sampler = EpisodeSampler(labels, classes, ways, shots, queries)
    return sampler.sample(episodes, torch.Generator(device="cpu").manual_seed(seed))


def episode_accuracies(logits: torch.Tensor, episodes: Episodes) -> torch.Tensor:
    """Per-episode accuracy ``[E]`` of query logits ``[E, N·Q, N]`` (queries in the order of
    :meth:`Episodes.query_labels`)."""
    labels = episodes.query_labels().to(logits.device)
    return (logits.argmax(-1) == labels).float().mean(-1).cpu()
