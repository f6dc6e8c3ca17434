"""Datasets as in-memory uint8 tensors: readers, splits and the image set they share.

- :func:`load_dataset` turns a spec (``cifar10:PATH``, ``folder:PATH``, ...) into a
  :class:`DataBundle` whose ``train``, ``test`` and ``unlabeled`` parts are
  :class:`ImageSet` objects, read on first access. :data:`DATASETS` lists the kinds.
- :func:`make_split` chooses k labeled images per class, seeded and stratified.
"""

from fewlabels.data.bundle import DataBundle, DatasetParts
from fewlabels.data.imageset import ImageSet
from fewlabels.data.readers import DATASETS, load_dataset, parse_spec
from fewlabels.data.splits import Split, make_split

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetParts",
    "ImageSet",
    "Split",
    "load_dataset",
    "make_split",
    "parse_spec",
]
