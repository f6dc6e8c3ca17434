"""The dataset readers, each on small files written here in its own format."""

import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data import DATASETS, load_dataset
from fewlabels.data import fashion_mnist as fashion_mnist_module
from fewlabels.data.idx import parse_idx
from fewlabels.errors import UserError

RNG = np.random.default_rng(0)


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write_idx_dataset(directory: Path, gz: bool = True, train: int = 6, test: int = 4) -> dict:
    """Four IDX files with 5x4 images (not square, so a swapped H and W would show)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count in (("train", train), ("t10k", test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = RNG.integers(0, 256, (count, 5, 4), np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = RNG.integers(0, 10, count, np.uint8)
    for stem, array in arrays.items():
        content = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(content))
        else:
            (directory / stem).write_bytes(content)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path, gz=gz)
    bundle = load_dataset(f"mnist:{tmp_path}")
    assert bundle.name == "mnist" and bundle.spec == f"mnist:{tmp_path}"
    assert bundle.train.images.shape == (6, 1, 5, 4) and bundle.train.images.dtype == torch.uint8
    assert np.array_equal(bundle.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert bundle.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert bundle.train.labels.dtype == torch.int64
    assert bundle.train.class_names == [str(digit) for digit in range(10)]
    assert bundle.unlabeled is None
    assert bundle.describe() == "mnist: train 6, test 4 images of 1x5x4, 10 classes"


def test_parse_idx_handles_wider_big_endian_types():
    values = np.array([[1, -2, 300], [4, 5, -600]], dtype=np.int16)
    parsed = parse_idx(idx_bytes(values.astype(">i2"), type_code=0x0B))
    assert parsed.dtype == np.int16 and np.array_equal(parsed, values)


@pytest.mark.parametrize(
    "damage",
    ["truncate", "bad_magic", "label_count", "bad_gzip", "missing_file"],
)
def test_damaged_idx_files_are_user_errors(tmp_path, damage):
    write_idx_dataset(tmp_path)
    images, labels = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncate":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-7]))
    elif damage == "bad_magic":
        images.write_bytes(gzip.compress(b"\x01\x02" + gzip.decompress(images.read_bytes())[2:]))
    elif damage == "label_count":
        labels.write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8))))
    elif damage == "bad_gzip":
        images.write_bytes(images.read_bytes()[:40])
    else:
        labels.unlink()
    with pytest.raises(UserError):
        bundle = load_dataset(f"mnist:{tmp_path}")
        bundle.train, bundle.test  # noqa: B018  (loading is what fails)


def test_fashion_mnist_with_a_path_has_fashion_class_names(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    bundle = load_dataset(f"fashion-mnist:{tmp_path}")
    assert bundle.train.class_names[0] == "T-shirt/top" and bundle.train.num_classes == 10


# --- fashion-mnist without a path: search and download ---------------------------------


@pytest.fixture
def isolated_fashion_mnist(tmp_path, monkeypatch):
    """No system copy, an empty user cache, no FEWLABELS_DATA, and no network."""
    monkeypatch.setattr(fashion_mnist_module, "SYSTEM_DIRECTORIES", ())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FEWLABELS_DATA", raising=False)

    def no_network(url):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(fashion_mnist_module, "fetch_url", no_network)
    return tmp_path / "cache" / "fewlabels" / "fashion-mnist"


@pytest.mark.parametrize("subfolder", ["", "fashion-mnist"])
def test_fashion_mnist_is_found_in_fewlabels_data(tmp_path, monkeypatch, isolated_fashion_mnist,
                                                  subfolder):
    write_idx_dataset(tmp_path / "data" / subfolder, train=3, test=2)
    monkeypatch.setenv("FEWLABELS_DATA", str(tmp_path / "data"))
    bundle = load_dataset("fashion-mnist")
    assert bundle.name == "fashion-mnist" and len(bundle.train) == 3 and len(bundle.test) == 2
    assert bundle.location == str(tmp_path / "data" / subfolder).rstrip("/")


def fake_server(tmp_path: Path) -> dict[str, bytes]:
    source = tmp_path / "server"
    write_idx_dataset(source, train=3, test=2)
    return {path.name: path.read_bytes() for path in source.iterdir()}


def test_fashion_mnist_downloads_checks_and_caches(tmp_path, monkeypatch, isolated_fashion_mnist):
    files = fake_server(tmp_path)
    checksums = {name: hashlib.md5(content).hexdigest() for name, content in files.items()}
    monkeypatch.setattr(fashion_mnist_module, "FILE_MD5", checksums)
    monkeypatch.setattr(fashion_mnist_module, "DOWNLOAD_URL", "http://mirror.test/fm/")
    requested = []

    def fetch(url):
        requested.append(url)
        return files[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(fashion_mnist_module, "fetch_url", fetch)
    bundle = load_dataset("fashion-mnist")
    assert sorted(requested) == sorted(f"http://mirror.test/fm/{name}" for name in files)
    assert sorted(os.listdir(isolated_fashion_mnist)) == sorted(files)  # no temporary files
    assert len(bundle.train) == 3 and bundle.location == str(isolated_fashion_mnist)
    requested.clear()
    load_dataset("fashion-mnist")
    assert requested == []  # the second time it comes from the cache


def test_fashion_mnist_bad_checksum_leaves_nothing_in_cache(tmp_path, monkeypatch,
                                                            isolated_fashion_mnist):
    files = fake_server(tmp_path)  # not the real files: their MD5 cannot match
    monkeypatch.setattr(fashion_mnist_module, "fetch_url", lambda url: files[url.rsplit("/")[-1]])
    with pytest.raises(UserError, match="MD5"):
        load_dataset("fashion-mnist")
    assert not isolated_fashion_mnist.exists() or not os.listdir(isolated_fashion_mnist)


def test_fashion_mnist_offline_says_where_it_looked_and_how_to_fix(isolated_fashion_mnist):
    with pytest.raises(UserError) as error:
        load_dataset("fashion-mnist")
    message = str(error.value)
    assert str(isolated_fashion_mnist) in message and "network is unreachable" in message
    assert "apt-get install dataset-fashion-mnist" in message and "FEWLABELS_DATA" in message
    assert "fashion-mnist-sample" in message


def test_shipped_sample_is_stratified():
    bundle = load_dataset("fashion-mnist-sample")
    train, test = bundle.train, bundle.test
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.num_classes == 10 and train.class_names[-1] == "Ankle boot"
    assert torch.bincount(train.labels).tolist() == [600] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert bundle is not load_dataset("fashion-mnist-sample") and bundle.train is train  # cached


# --- CIFAR-10 / CIFAR-100 ---------------------------------------------------------------


def cifar_rows(count: int) -> np.ndarray:
    """Rows whose red plane is 10, green 20, blue 30, plus the image index."""
    planes = np.repeat(np.array([10, 20, 30], np.uint8), 1024)
    return np.stack([planes + index for index in range(count)])


def pickle_batch(path: Path, content: dict, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps({key.encode(): value for key, value in content.items()},
                                  protocol=protocol))


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index in range(1, 6):
        pickle_batch(folder / f"data_batch_{index}",
                     {"data": cifar_rows(2), "labels": [index, 9], "batch_label": b"x"})
    pickle_batch(folder / "test_batch", {"data": cifar_rows(3), "labels": [0, 1, 2]},
                 protocol=5)
    names = [name.encode() for name in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                        "frog", "horse", "ship", "truck"]]
    pickle_batch(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return folder


def test_cifar10_reads_pickled_batches_from_folder_parent_and_archive(tmp_path):
    folder = write_cifar10(tmp_path / "extracted")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for path in (folder, folder.parent, archive):
        bundle = load_dataset(f"cifar10:{path}")
        train = bundle.train
        assert train.images.shape == (10, 3, 32, 32) and train.labels.tolist()[:4] == [1, 9, 2, 9]
        assert train.images[1, :, 5, 7].tolist() == [11, 21, 31]  # channel planes, image 1
        assert train.class_names[1] == "automobile" and len(bundle.test) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == [archive.name, "extracted"]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for part, count in (("train", 4), ("test", 2)):
        labels = [99, 5, 7, 0][:count]
        pickle_batch(folder / part, {"data": cifar_rows(count), "fine_labels": labels,
                                     "coarse_labels": [1] * count})
    pickle_batch(folder / "meta", {"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   "coarse_label_names": [b"c"] * 20})
    bundle = load_dataset(f"cifar100:{tmp_path}")
    assert bundle.train.labels.tolist() == [99, 5, 7, 0] and bundle.train.num_classes == 100
    assert bundle.test.class_names[99] == "f99"


def test_cifar_batches_with_text_keys_are_read(tmp_path):
    folder = write_cifar10(tmp_path)
    content = {"data": cifar_rows(2), "labels": [3, 4]}  # str keys, as Python 3 writes them
    (folder / "data_batch_2").write_bytes(pickle.dumps(content, protocol=2))
    assert load_dataset(f"cifar10:{folder}").train.labels.tolist()[2:4] == [3, 4]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("damage", ["code", "truncated", "not_a_pickle", "wrong_kind"])
def test_unsafe_or_damaged_cifar_batches_are_user_errors(tmp_path, damage):
    folder = write_cifar10(tmp_path)
    batch = folder / "data_batch_3"
    if damage == "code":
        batch.write_bytes(pickle.dumps({b"data": RunsCode(), b"labels": []}))
    elif damage == "truncated":
        batch.write_bytes(batch.read_bytes()[:500])
    elif damage == "not_a_pickle":
        batch.write_bytes(b"hello, world")
    with pytest.raises(UserError, match="refusing" if damage == "code" else None):
        kind = "cifar100" if damage == "wrong_kind" else "cifar10"
        load_dataset(f"{kind}:{tmp_path}").train  # noqa: B018


# --- STL-10 -----------------------------------------------------------------------------


def stl_image(index: int) -> np.ndarray:
    """[3, 96, 96]: rows count up, columns add 100 from the middle on, channels add 1."""
    rows = np.arange(96)[:, None] + np.where(np.arange(96) >= 48, 100, 0)[None, :]
    return np.stack([rows + channel + index for channel in range(3)]).astype(np.uint8)


def stl_file(images: list[np.ndarray]) -> bytes:
    """The STL-10 layout, written independently of the reader: each plane column-major."""
    return b"".join(plane.tobytes(order="F") for image in images for plane in image)


def write_stl10(root: Path, unlabeled: bool = True) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "train_X.bin").write_bytes(stl_file([stl_image(index) for index in range(3)]))
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (folder / "test_X.bin").write_bytes(stl_file([stl_image(7), stl_image(8)]))
    (folder / "test_y.bin").write_bytes(bytes([2, 3]))
    if unlabeled:
        (folder / "unlabeled_X.bin").write_bytes(stl_file([stl_image(5)] * 4))
    (folder / "class_names.txt").write_text("\n".join(f"class{index}" for index in range(10)))
    return folder


def test_stl10_transposes_column_major_images_and_shifts_labels(tmp_path):
    write_stl10(tmp_path)
    bundle = load_dataset(f"stl10:{tmp_path}")  # the parent of stl10_binary
    train = bundle.train
    assert train.images.shape == (3, 3, 96, 96) and train.labels.tolist() == [0, 9, 3]
    assert torch.equal(train.images[2], torch.from_numpy(stl_image(2)))
    assert train.images[0, 0, 10, 60] == 110  # row 10, column 60 (right half)
    assert train.class_names[9] == "class9" and bundle.test.labels.tolist() == [1, 2]
    unlabeled = bundle.unlabeled
    assert unlabeled.labels is None and unlabeled.images.shape == (4, 3, 96, 96)
    assert torch.equal(unlabeled.images[3], torch.from_numpy(stl_image(5)))


def test_stl10_without_unlabeled_file_has_no_unlabeled_part(tmp_path):
    folder = write_stl10(tmp_path, unlabeled=False)
    assert load_dataset(f"stl10:{folder}").unlabeled is None


@pytest.mark.parametrize("damage", ["truncated", "label_zero", "label_count", "missing"])
def test_damaged_stl10_files_are_user_errors(tmp_path, damage):
    folder = write_stl10(tmp_path)
    if damage == "truncated":
        (folder / "train_X.bin").write_bytes((folder / "train_X.bin").read_bytes()[:-5])
    elif damage == "label_zero":
        (folder / "train_y.bin").write_bytes(bytes([0, 1, 2]))
    elif damage == "label_count":
        (folder / "train_y.bin").write_bytes(bytes([1, 2]))
    else:
        (folder / "test_y.bin").unlink()
    with pytest.raises(UserError):
        load_dataset(f"stl10:{folder}").train  # noqa: B018


# --- image folders ----------------------------------------------------------------------


def save_image(path: Path, color, mode: str = "RGB", size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_class_folders(root: Path) -> None:
    save_image(root / "dog" / "b.png", (0, 0, 255))
    save_image(root / "dog" / "a.JPG", (0, 255, 0))
    save_image(root / "cat" / "x.webp", (255, 0, 0))
    save_image(root / "cat" / "nested" / "y.jpeg", (255, 0, 0))
    (root / "cat" / "notes.txt").write_text("not an image")
    save_image(root / "cat" / ".hidden.png", (9, 9, 9))


def test_folder_with_class_folders_is_a_labeled_train_part(tmp_path):
    write_class_folders(tmp_path)
    bundle = load_dataset(f"folder:{tmp_path}", image_size=8)
    train = bundle.train
    assert train.class_names == ["cat", "dog"] and train.labels.tolist() == [0, 0, 1, 1]
    assert train.images.shape == (4, 3, 8, 8) and bundle.test is None
    assert train.images[3, :, 4, 4].tolist() == [0, 0, 255]  # dog/b.png, after dog/a.JPG
    assert abs(int(train.images[2, 1, 4, 4]) - 255) <= 2  # a JPEG of pure green
    assert bundle.name == tmp_path.name and bundle.skipped == 0


def test_flat_folder_is_an_unlabeled_train_part_of_default_size(tmp_path):
    for index in range(3):
        save_image(tmp_path / f"{index}.png", index * 50, mode="L", size=(40, 40))
    Image.fromarray(np.full((40, 40), 77 * 257, np.uint16)).save(tmp_path / "3.png")  # 16-bit
    bundle = load_dataset(f"folder:{tmp_path}")
    assert bundle.train.labels is None and bundle.test is None and bundle.unlabeled is None
    assert bundle.train.images.shape == (4, 1, 32, 32)  # all grayscale: one channel
    assert bundle.train.images[2].unique().tolist() == [100]
    assert bundle.train.images[3].unique().tolist() == [77]  # scaled, not clipped


def test_folder_with_train_test_and_unlabeled_parts(tmp_path):
    save_image(tmp_path / "train" / "cat" / "0.png", (255, 0, 0))
    save_image(tmp_path / "train" / "dog" / "0.png", 128, mode="L")
    save_image(tmp_path / "test" / "dog" / "0.png", (0, 0, 255))
    save_image(tmp_path / "unlabeled" / "any" / "0.png", (1, 2, 3))
    bundle = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert bundle.train.labels.tolist() == [0, 1] and bundle.test.labels.tolist() == [1]
    assert bundle.test.class_names == ["cat", "dog"] and bundle.unlabeled.labels is None
    assert bundle.train.images[1, :, 0, 0].tolist() == [128] * 3  # mixed modes: RGB
    assert {part.channels for part in bundle.parts().values()} == {3}


def test_folder_crops_the_centre_square(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    image.paste((255, 0, 0), (10, 0, 20, 10))  # the centre 10x10 is red
    image.save(tmp_path / "wide.png")
    images = load_dataset(f"folder:{tmp_path}", image_size=5).train.images
    assert images[0, 0].min() == 255 and images[0, 2].max() == 0


@pytest.mark.parametrize("on_corrupt", ["skip", "error"])
def test_corrupt_image_is_skipped_or_named(tmp_path, on_corrupt):
    write_class_folders(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bundle = load_dataset(f"folder:{tmp_path}", on_corrupt=on_corrupt)
    if on_corrupt == "error":
        with pytest.raises(UserError, match=r"broken\.png.*--on-corrupt skip"):
            bundle.train  # noqa: B018
        return
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert len(bundle.train) == 4
    assert bundle.skipped == 1 and "1 unreadable images skipped" in bundle.describe()


@pytest.mark.parametrize("layout", ["empty", "only_text", "empty_train", "all_corrupt"])
def test_folders_without_readable_images_are_user_errors(tmp_path, layout):
    if layout == "only_text":
        (tmp_path / "a.txt").write_text("x")
    elif layout == "empty_train":
        (tmp_path / "train").mkdir()
        save_image(tmp_path / "test" / "a.png", 0)
    elif layout == "all_corrupt":
        (tmp_path / "a.png").write_bytes(b"broken")
    with warnings.catch_warnings(), pytest.raises(UserError):
        warnings.simplefilter("ignore")
        load_dataset(f"folder:{tmp_path}").train  # noqa: B018


# --- npz --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW", "float"])
def test_npz_image_layouts(tmp_path, layout):
    nchw = RNG.integers(0, 256, (5, 3 if layout != "NHW" else 1, 6, 7), np.uint8)
    stored = {"NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw, "NHW": nchw[:, 0],
              "float": nchw / 255.0}[layout]
    np.savez(tmp_path / "set.npz", x_train=stored, y_train=np.array([0, 2, 1, 2, 0]),
             x_test=stored[:2], y_test=np.array([1, 1]), x_unlabeled=stored[:3],
             class_names=np.array(["a", "b", "c"]))
    bundle = load_dataset(f"npz:{tmp_path / 'set.npz'}")
    assert bundle.name == "set" and bundle.train.class_names == ["a", "b", "c"]
    assert torch.equal(bundle.train.images, torch.from_numpy(nchw))
    assert bundle.test.labels.tolist() == [1, 1] and bundle.unlabeled.labels is None


def test_npz_defaults_class_names_and_resizes(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", x_train=np.zeros((4, 8, 8, 3), np.uint8),
                        y_train=np.array([0, 3, 1, 1]))
    bundle = load_dataset(f"npz:{tmp_path / 'd.npz'}", image_size=4)
    assert bundle.train.class_names == ["0", "1", "2", "3"] and bundle.test is None
    assert bundle.train.images.shape == (4, 3, 4, 4)


@pytest.mark.parametrize("problem", ["no_x_train", "float_range", "channels", "label_count",
                                     "label_range", "npy", "not_npz", "truncated", "pickled"])
def test_bad_npz_files_are_user_errors(tmp_path, problem):
    path = tmp_path / "bad.npz"
    images = np.zeros((3, 4, 4), np.uint8)
    arrays = {"x_train": images, "y_train": np.array([0, 1, 1])}
    arrays |= {"no_x_train": {"x_test": images}, "float_range": {"x_train": images * 2.0 + 3},
               "channels": {"x_train": np.zeros((3, 5, 4, 4), np.uint8)},
               "label_count": {"y_train": np.array([0, 1])},
               "label_range": {"y_train": np.array([0, 1, 2]), "class_names": np.array(["a"])},
               "pickled": {"class_names": np.array(["a", None], dtype=object)},
               }.get(problem, {})
    if problem == "no_x_train":
        del arrays["x_train"], arrays["y_train"]
    with open(path, "wb") as stream:
        if problem == "npy":
            np.save(stream, images)
        elif problem == "not_npz":
            stream.write(b"just text")
        else:
            np.savez(stream, **arrays)
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(UserError, match="x_test.*expected" if problem == "no_x_train" else None):
        load_dataset(f"npz:{path}").train  # noqa: B018


# --- specs and the registry -------------------------------------------------------------


def test_registry_lists_every_kind_with_its_form():
    assert DATASETS.names() == ["cifar10", "cifar100", "fashion-mnist", "fashion-mnist-m",
                                "fashion-mnist-sample", "folder", "mnist", "npz", "stl10"]
    assert DATASETS.summary("cifar10").startswith("cifar10:PATH  CIFAR-10 python pickle")


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("imagenet:/x", {}, "choose one of: cifar10, cifar100"),
        ("cifar10", {}, "cifar10 needs a path: cifar10:PATH"),
        ("folder:", {}, "folder needs a path"),
        ("fashion-mnist-sample:/x", {}, "takes no path"),
        ("cifar10:/no/such/dir", {}, "no such file or directory: /no/such/dir"),
        ("fashion-mnist-sample", {"on_corrupt": "ignore"}, "on_corrupt"),
        ("fashion-mnist-sample", {"image_size": 0}, "image size"),
    ],
)
def test_bad_specs_are_user_errors(spec, options, message):
    with pytest.raises(UserError, match=message):
        load_dataset(spec, **options)


@pytest.mark.parametrize("kind", ["mnist", "cifar10", "cifar100", "stl10", "folder", "npz"])
def test_every_reader_rejects_a_wrong_file_with_user_error(tmp_path, kind):
    (tmp_path / "junk.bin").write_bytes(b"\x00junk" * 10)
    for target in (tmp_path, tmp_path / "junk.bin"):  # a folder without the dataset, a junk file
        with pytest.raises(UserError):
            bundle = load_dataset(f"{kind}:{target}")
            bundle.parts()

