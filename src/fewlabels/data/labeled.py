"""The labeled parts of a dataset a classifier is trained and tested on."""

from __future__ import annotations

import torch

from fewlabels.data.imageset import ImageSet
from fewlabels.data.readers import load_dataset
from fewlabels.data.splits import make_split
from fewlabels.errors import UserError

HELD_OUT_FRACTION = 0.2  # of each class, as the test part of data that has none


def train_and_test(spec: str, image_size: int | None, channels: int | None, on_corrupt: str
                   ) -> tuple[ImageSet, ImageSet, str]:
    """The labeled train and test parts, resized to ``image_size`` (the size the backbone
    was trained at; ``None``: as stored), with ``channels`` checked (``None``: any). Data
    without a test part gets one: a seeded 20% of every class, held out."""
    bundle = load_dataset(spec, image_size=image_size, on_corrupt=on_corrupt)
    train = bundle.train
    if train is None or train.labels is None:
        raise UserError(f"{spec} has no labeled images; give labeled data "
                        "(class subfolders, or a dataset with labels)")
    if channels is not None and train.channels != channels:
        raise UserError(f"{spec} has {train.channels}-channel images but the backbone was "
                        f"trained on {channels}-channel images; evaluate on data like it")
    test, note = bundle.test, "test part"
    if test is None or test.labels is None:
        smallest = int(torch.bincount(train.labels).min())
        held = max(1, round(HELD_OUT_FRACTION * smallest))
        split = make_split(train.labels, None, seed=0, validation_per_class=held)
        test, train = train.subset(split.validation), train.subset(split.labeled)
        note = f"held-out {held} images per class of the train part (it has no test part)"
    return train, test, note
