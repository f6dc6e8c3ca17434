"""Make the Fashion-MNIST sample that ships with fewlabels (``fashion-mnist-sample``).

From the real Fashion-MNIST (found as ``load_dataset("fashion-mnist")`` finds it), take a
seeded, stratified sample: 600 train images per class (6000) and 100 test images per class
(1000), keeping the original order of the files. It is written in the npz format of
``fewlabels.data.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``, ``class_names``)
plus ``train_indices`` and ``test_indices``, the positions of the chosen images in the
original files, so that the sample can be traced back.

Usage::

    python scripts/make_fashion_mnist_sample.py [--seed 0] [--output PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fewlabels.data import load_dataset

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "src/fewlabels/data/samples/fashion_mnist_sample.npz"
)
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random positions of every class, sorted."""
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=per_class, replace=False)
        for cls in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    bundle = load_dataset("fashion-mnist")
    rng = np.random.Generator(np.random.PCG64(args.seed))
    arrays = {}
    for part, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images = getattr(bundle, part)
        labels = images.labels.numpy()
        indices = stratified_indices(labels, per_class, rng)
        arrays[f"x_{part}"] = images.images.numpy()[indices, 0]  # [N, 28, 28] grayscale
        arrays[f"y_{part}"] = labels[indices].astype(np.uint8)
        arrays[f"{part}_indices"] = indices.astype(np.int32)
    arrays["class_names"] = np.array(bundle.train.class_names)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    size_mb = args.output.stat().st_size / 1e6
    print(f"wrote {args.output} ({size_mb:.2f} MB) from {bundle.location}: "
          f"{len(arrays['x_train'])} train and {len(arrays['x_test'])} test images")


if __name__ == "__main__":
    main()
