"""fashion-mnist-m: MNIST-M's blend on a hand case, patches cut where drawn, the same seed
giving the same bytes and another seed others, Fashion-MNIST's labels kept, the photographs
checked, and the registered spec built once into the cache and loaded."""

import json

import numpy as np
import pytest

from fewlabels.data import DATASETS, load_dataset
from fewlabels.data import fashion_mnist_m as fmm
from fewlabels.data.fashion_mnist import sample_path
from fewlabels.data.npz import open_npz_dataset
from fewlabels.errors import UserError


@pytest.fixture(scope="module")
def sample():
    parts = open_npz_dataset(sample_path(), "fashion-mnist-sample")
    return parts.train(), parts.test()


@pytest.fixture(scope="module")
def photos():
    return fmm.read_photographs()


def test_blend_is_the_absolute_difference_per_channel():
    items = np.array([[[200, 0], [255, 30]]], dtype=np.uint8)  # [1, 2, 2]
    patches = np.zeros((1, 3, 2, 2), dtype=np.uint8)
    patches[0, :, 0, 0] = (10, 250, 200)
    patches[0, :, 0, 1] = (7, 8, 9)
    patches[0, :, 1, 0] = (0, 255, 128)
    patches[0, :, 1, 1] = (30, 29, 31)
    out = fmm.blend(items, patches)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [190, 50, 0]
    assert out[0, :, 0, 1].tolist() == [7, 8, 9]  # an item pixel of 0 keeps the photo
    assert out[0, :, 1, 0].tolist() == [255, 0, 127]
    assert out[0, :, 1, 1].tolist() == [0, 1, 1]


def test_patches_are_cut_where_drawn_from_photographs_of_different_sizes():
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in
              [(30, 40), (60, 29), (28, 28)]]
    which, top, left = fmm.draw_patches(500, photos, rng)
    assert set(which.tolist()) == {0, 1, 2}
    for index, photo in enumerate(photos):
        chosen = which == index
        assert (top[chosen] >= 0).all() and (top[chosen] + 28 <= photo.shape[0]).all()
        assert (left[chosen] >= 0).all() and (left[chosen] + 28 <= photo.shape[1]).all()
    patches = fmm.cut_patches(photos, which, top, left, chunk=64)
    for n in (0, 1, 77, 499):
        expected = photos[which[n]][top[n] : top[n] + 28, left[n] : left[n] + 28]
        assert np.array_equal(patches[n], expected.transpose(2, 0, 1))


def test_same_seed_same_bytes_other_seed_other_images_labels_kept(sample, photos):
    train, test = sample
    first = fmm.build_arrays(train, test, photos, seed=0)
    again = fmm.build_arrays(train, test, photos, seed=0)
    other = fmm.build_arrays(train, test, photos, seed=1)
    assert first["x_train"].shape == (len(train), 3, 28, 28)
    assert first["x_test"].shape == (len(test), 3, 28, 28)
    assert first["x_train"].dtype == np.uint8
    for key in ("x_train", "x_test", "y_train", "y_test"):
        assert np.array_equal(first[key], again[key])
    assert fmm.arrays_digest(first) == fmm.arrays_digest(again)
    assert not np.array_equal(first["x_train"], other["x_train"])
    assert np.array_equal(first["y_train"], train.labels.numpy())
    assert np.array_equal(first["y_test"], test.labels.numpy())
    assert first["class_names"].tolist() == train.class_names
    # every image is |patch - item| for some patch: where the item is 0, a photograph's pixel;
    # and the images are in colour (the channels differ)
    assert (first["x_train"][:, 0] != first["x_train"][:, 2]).mean() > 0.5


def test_the_test_part_does_not_depend_on_the_train_part_size(sample, photos):
    train, test = sample
    full = fmm.build_arrays(train, test, photos, seed=0)
    fewer = fmm.build_arrays(train.subset(np.arange(100)), test, photos, seed=0)
    assert np.array_equal(full["x_test"], fewer["x_test"])
    assert np.array_equal(full["x_train"][:100], fewer["x_train"])


def test_photographs_missing_or_different_are_a_one_line_error(monkeypatch, tmp_path):
    missing = fmm.Photograph("no_such_package_for_fewlabels", "data", "a.png", "0" * 64)
    with pytest.raises(UserError, match=r"fewlabels\[colour\]") as error:
        fmm.read_photographs((missing,))
    assert "\n" not in str(error.value)
    real = fmm.PHOTOGRAPHS[0]
    changed = fmm.Photograph(real.package, real.folder, real.file, "0" * 64)
    with pytest.raises(UserError, match="SHA-256"):
        fmm.read_photographs((changed,))


def test_the_spec_is_listed_built_once_into_the_cache_and_loaded(monkeypatch, tmp_path, sample):
    assert "fashion-mnist-m" in DATASETS.names()
    assert "MNIST-M" in DATASETS.summary("fashion-mnist-m")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train, test = sample
    small = (train.subset(np.arange(300)), test.subset(np.arange(100)), "the sample")
    calls = []
    monkeypatch.setattr(fmm, "load_source", lambda: calls.append(1) or small)
    bundle = load_dataset("fashion-mnist-m")
    assert bundle.describe() == ("fashion-mnist-m: train 300, test 100 images of 3x28x28, "
                                 "10 classes")
    assert bundle.train.labels.tolist() == small[0].labels.tolist()
    npz_path, json_path = fmm.cached_paths(fmm.DATASET_SEED)
    assert npz_path.parent == tmp_path / "fewlabels" / "fashion-mnist-m"
    described = json.loads(json_path.read_text())
    assert described["recipe"]["seed"] == fmm.DATASET_SEED
    assert [photo["file"].split("/")[-1] for photo in described["recipe"]["photographs"]] == [
        "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
        "grace_hopper.jpg"]
    expected = fmm.build_arrays(*small[:2], fmm.read_photographs(), fmm.DATASET_SEED)
    assert described["arrays_sha256"] == fmm.arrays_digest(expected)
    assert np.array_equal(bundle.train.images.numpy(), expected["x_train"])
    # the second load reads the cache; a cache made by another recipe is rebuilt
    assert load_dataset("fashion-mnist-m").test.images.shape == (100, 3, 28, 28)
    assert calls == [1]
    json_path.write_text(json.dumps({**described, "recipe": {"version": 0}}))
    load_dataset("fashion-mnist-m").train  # noqa: B018
    assert calls == [1, 1]
    assert not list(npz_path.parent.glob("*.tmp"))  # written atomically, nothing left over
