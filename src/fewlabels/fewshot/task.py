"""A few-shot task: the class split, the base-class training images, the novel-class images
with their episodes, and how to make the network a method trains.

Methods train on the base part only; its labels are renumbered ``0..B-1`` (the position of
the class in ``split.base``), so no novel label can reach training (learn2learn#119: training
labels leaked into test episodes). Episodes are drawn from the *test* part's novel-class
images (data without a test part holds out a seeded 20% of every class), so the images a
pretraining run saw without labels are not the ones it is tested on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.data.imageset import ImageSet
from fewlabels.data.labeled import train_and_test
from fewlabels.errors import UserError
from fewlabels.fewshot.classes import ClassSplit
from fewlabels.fewshot.episodes import Episodes, sample_episodes
from fewlabels.methods.base import DataInfo
from fewlabels.runs import (
    PretrainedRun,
    backbone_spec,
    data_info,
    load_pretrained,
    make_backbone,
)


@dataclass
class FewShotTask:
    """Everything a method needs: ``base`` (base-class training images, labels ``0..B-1``),
    ``novel`` (the images ``episodes`` index, dataset labels), the images' description
    ``data`` (normalisation: the ``init`` run's when there is one), the ``backbone`` spec
    (the fresh network methods train, or the ``init`` run's), the pretraining run ``init``
    (or ``None``) and its folder ``init_dir``, the data spec, the seed and the device."""

    split: ClassSplit
    base: ImageSet
    novel: ImageSet
    episodes: Episodes
    data: DataInfo
    backbone: dict[str, Any]
    init: PretrainedRun | None = None
    init_dir: Path | None = None
    spec: str = ""
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def new_backbone(self) -> nn.Module:
        """The network a method trains: a copy of the ``init`` run's (transfer from
        pretraining), else a fresh backbone drawn from the seed (the global random state is
        left as it was)."""
        if self.init is not None:
            return copy.deepcopy(self.init.network).train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return make_backbone(self.backbone, self.data)

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float on the task's device, normalised with ``data``'s mean and
        std."""
        return normalize(to_float(images.to(self.device)), self.data.mean, self.data.std,
                         inplace=True)


def base_part(train: ImageSet, split: ClassSplit, per_class: int | None, seed: int
              ) -> ImageSet:
    """The base classes' training images (at most ``per_class`` of each, chosen with
    ``seed``), labels renumbered to positions in ``split.base``."""
    assert train.labels is not None
    generator = torch.Generator(device="cpu").manual_seed(seed)
    chosen = []
    for label in split.base:
        members = torch.nonzero(train.labels == label).flatten()
        if per_class is not None and per_class < len(members):
            members = members[torch.randperm(len(members), generator=generator)[:per_class]]
        chosen.append(members)
    indices = torch.cat(chosen).sort().values
    base = train.subset(indices)
    renumber = torch.full((len(split.class_names),), -1, dtype=torch.long)
    renumber[list(split.base)] = torch.arange(len(split.base))
    base.labels = renumber[base.labels]
    base.class_names = split.names(split.base)
    return base


def novel_part(test: ImageSet, split: ClassSplit) -> ImageSet:
    """The novel classes' images (dataset labels kept): what episodes are drawn from."""
    assert test.labels is not None
    keep = torch.isin(test.labels, torch.tensor(split.novel))
    return test.subset(torch.nonzero(keep).flatten())


def prepare_task(spec: str, split: ClassSplit | Callable[[list[str]], ClassSplit], *,
                 ways: int, shots: int, queries: int,
                 episodes: int, seed: int, backbone: dict[str, Any] | None = None,
                 init_dir: str | Path | None = None, image_size: int | None = None,
                 base_images_per_class: int | None = None, on_corrupt: str = "skip",
                 device: torch.device | str = "cpu") -> FewShotTask:
    """Load data ``spec``, cut it into base and novel parts by ``split`` (a class split, or a
    function choosing one from the data's class names) and draw the episodes from ``seed``
    (the same seed, the same episodes). ``init_dir``: a pretraining
    run whose network and normalisation the method uses (its image size wins).
    ``backbone``: the arguments of :func:`fewlabels.runs.backbone_spec` for methods that
    train a fresh network (``name``, ``width``, ``depth``, options; default a ConvNet)."""
    init = None if init_dir is None else load_pretrained(init_dir)
    size = init.data.image_size if init is not None else image_size
    channels = init.data.channels if init is not None else None
    train, test, _ = train_and_test(spec, size, channels, on_corrupt)
    if train.labels is None or not train.class_names:
        raise UserError(f"{spec} has no labeled images; few-shot episodes need labeled "
                        "data (class subfolders, or a dataset with labels)")
    if callable(split):
        split = split(list(train.class_names))
    if tuple(train.class_names) != split.class_names:
        raise UserError(f"{spec} has classes {', '.join(train.class_names)}, not those of the "
                        "class split; split this data's classes")
    novel = novel_part(test, split)
    drawn = sample_episodes(novel.labels, split.novel, ways=ways, shots=shots, queries=queries,
                            episodes=episodes, seed=seed)
    base = base_part(train, split, base_images_per_class, seed)
    options = dict(backbone or {})
    name = options.pop("name", None) or "convnet"
    width, depth = options.pop("width", None), options.pop("depth", None)
    spec_of_backbone = (init.checkpoint["run"]["backbone"] if init is not None else
                        backbone_spec(name, width, depth, train.image_size[0], **options))
    if init is not None:
        # the pretrained network learned on its own normalisation: keep it
        data = replace(init.data, num_classes=len(split.base), num_images=len(base))
    else:
        data = data_info(base, len(split.base))
    return FewShotTask(split, base, novel, drawn, data, spec_of_backbone, init,
                       None if init_dir is None else Path(init_dir), spec, seed,
                       torch.device(device))
