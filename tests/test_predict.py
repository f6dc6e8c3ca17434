"""`fewlabels predict`: one CSV row per image with the run's prediction and its confidence
(the max softmax of the moving-average network), ids from an image folder's files, labels and
the accuracy over them, one-line errors, atomic output; and the image ids the data layer keeps
for it."""

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.atomic import atomic_torch_save
from fewlabels.cli import main
from fewlabels.data import load_dataset
from fewlabels.data.bundle import DataBundle, DatasetParts
from fewlabels.data.imageset import ImageSet
from fewlabels.data.labeled import train_and_test
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.runs import backbone_spec, build_method, load_method, method_config

CLASSES = ["ant", "bee", "cow"]


def _save(path, value, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (10, 10), value).save(path)


def _write_folder(root):
    """train/CLASS/i.png (4 a class), test/CLASS/i.png (2 a class), unlabeled/u*.png (3) and
    a file name CSV must quote: grayscale squares whose brightness tells the class."""
    for index, name in enumerate(CLASSES):
        for image in range(4):
            _save(root / "train" / name / f"{image}.png", 40 + 80 * index + 5 * image)
        for image in range(2):
            _save(root / "test" / name / f"{image}.png", 42 + 80 * index + 7 * image)
    for image in range(3):
        _save(root / "unlabeled" / f"u{image}.png", 30 + 90 * image)
    _save(root / "unlabeled" / "\u00fcber, \"2\".png", 99)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A tiny supervised run on an 8x8 grayscale image folder, and that folder."""
    base = tmp_path_factory.mktemp("predict")
    folder = base / "images"
    _write_folder(folder)
    run = base / "run"
    assert main(["semi", "--method", "supervised", "--labels-per-class", "2", "--data",
                 f"folder:{folder}", "--image-size", "8", "--width", "4", "--depth", "2",
                 "--epochs", "2", "--batch-size", "4", "--ema-decay", "0.5", "--no-progress",
                 "--out", str(run)]) == 0
    return run, folder


def _rows(path):
    with open(path, encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def _direct_probabilities(run, images):
    """Softmax of the run's evaluated network, computed here without fewlabels' helpers."""
    method, _ = load_method(run)
    mean = torch.tensor(method.data.mean)[:, None, None]
    std = torch.tensor(method.data.std)[:, None, None]
    with torch.no_grad():
        return method.classifier_network().eval()((images.float() / 255 - mean) / std).softmax(1)


def _printed_accuracy(output):
    return float(re.search(r"accuracy ([0-9.]+)%", output).group(1))


def test_every_image_gets_a_row_with_the_max_softmax_and_its_file(classifier_run, tmp_path,
                                                                   capsys):
    run, folder = classifier_run
    capsys.readouterr()
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == ["id", "part", "prediction", "confidence", "label"]
    bundle = load_dataset(f"folder:{folder}", image_size=8)
    expected_ids = ([f"train/{name}/{i}.png" for name in CLASSES for i in range(4)]
                    + [f"test/{name}/{i}.png" for name in CLASSES for i in range(2)]
                    + [f"unlabeled/u{i}.png" for i in range(3)] + ['unlabeled/\u00fcber, "2".png'])
    assert [row["id"] for row in rows] == expected_ids
    assert [row["part"] for row in rows] == ["train"] * 12 + ["test"] * 6 + ["unlabeled"] * 4
    images = torch.cat([bundle.train.images, bundle.test.images, bundle.unlabeled.images])
    probabilities = _direct_probabilities(run, images)
    confidences = torch.tensor([float(row["confidence"]) for row in rows])
    assert torch.allclose(confidences, probabilities.max(dim=1).values, atol=1e-6)
    assert [row["prediction"] for row in rows] == [CLASSES[i] for i in
                                                   probabilities.argmax(dim=1).tolist()]
    labels = torch.cat([bundle.train.labels, bundle.test.labels]).tolist()
    assert [row["label"] for row in rows] == [CLASSES[i] for i in labels] + [""] * 4
    labeled = [row for row in rows if row["label"]]
    right = sum(row["prediction"] == row["label"] for row in labeled) / len(labeled)
    assert _printed_accuracy(printed) == pytest.approx(100 * right, abs=0.005)
    assert f"mean confidence {confidences.mean():.3f}" in printed and str(out) in printed
    assert "predicted 22 images" in printed


def test_other_data_gets_part_and_index_ids_top_k_and_labels_by_class_name(classifier_run,
                                                                           tmp_path, capsys):
    run, _ = classifier_run
    generator = torch.Generator().manual_seed(0)
    x_train = torch.randint(0, 256, (5, 8, 8), generator=generator, dtype=torch.uint8)
    x_test = torch.randint(0, 256, (4, 8, 8), generator=generator, dtype=torch.uint8)
    names = ["cow", "bee", "yak"]  # another order than the run's, and a class it lacks
    np.savez(tmp_path / "other.npz", x_train=x_train.numpy(), y_train=np.array([0, 1, 2, 0, 1]),
             x_test=x_test.numpy(), y_test=np.array([2, 2, 1, 0]), class_names=np.array(names))
    out = tmp_path / "other.csv"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), "--data", f"npz:{tmp_path / 'other.npz'}",
                 "--part", "test", "--top", "3", "--out", str(out)]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["id", "part", "prediction", "confidence", "prediction_2",
                             "probability_2", "prediction_3", "probability_3", "label"]
    assert [row["id"] for row in rows] == ["test/0", "test/1", "test/2", "test/3"]
    assert {row["part"] for row in rows} == {"test"}
    assert [row["label"] for row in rows] == ["yak", "yak", "bee", "cow"]
    probabilities = _direct_probabilities(run, x_test[:, None])
    for row, expected in zip(rows, probabilities, strict=True):
        ranked = [(row["prediction"], float(row["confidence"]))] + [
            (row[f"prediction_{k}"], float(row[f"probability_{k}"])) for k in (2, 3)]
        assert sorted(name for name, _ in ranked) == CLASSES
        for name, value in ranked:
            assert value == pytest.approx(expected[CLASSES.index(name)].item(), abs=1e-6)
        assert [value for _, value in ranked] == sorted((v for _, v in ranked), reverse=True)
    right = sum(row["prediction"] == row["label"] for row in rows) / len(rows)
    printed = capsys.readouterr()
    assert _printed_accuracy(printed.out) == pytest.approx(100 * right, abs=0.005)
    assert "include classes the run does not know (yak); they count as wrong" in printed.err


def _pretraining_run(classifier_run, path):
    """A rotation pretraining run of the same backbone and data (a checkpoint as the trainer
    writes it)."""
    checkpoint = load_checkpoint(classifier_run)
    spec = {**checkpoint["run"], "kind": "pretrain", "method": "rotation",
            "method_config": method_config("rotation", {}),
            "backbone": backbone_spec("convnet", 4, 2, 8)}
    spec.pop("class_names")
    spec["data"] = {**spec["data"], "info": {**spec["data"]["info"], "num_classes": 0}}
    atomic_torch_save({**checkpoint, "run": spec, "model": build_method(spec).state_dict()},
                      path / "checkpoint.pt")
    return path


@pytest.mark.parametrize("case, message", [
    ("pretraining run", "not a classifier; train one"),
    ("colour images", "3-channel images but the run was trained on 1-channel images"),
    ("missing part", "has no unlabeled part; choose --part from: train, all"),
    ("too many classes", "--top 4 is more than the run's 3 classes"),
])
def test_what_cannot_be_predicted_gets_a_one_line_error_and_no_file(classifier_run, tmp_path,
                                                                    capsys, case, message):
    run, folder = classifier_run
    arguments = ["--checkpoint", str(run)]
    if case == "pretraining run":
        (tmp_path / "pretrained").mkdir()
        arguments = ["--checkpoint", str(_pretraining_run(run, tmp_path / "pretrained"))]
    elif case == "colour images":
        _save(tmp_path / "colour" / "a" / "0.png", (255, 0, 0), mode="RGB")
        _save(tmp_path / "colour" / "b" / "0.png", (0, 0, 255), mode="RGB")
        arguments += ["--data", f"folder:{tmp_path / 'colour'}"]
    elif case == "missing part":
        _save(tmp_path / "flat" / "a" / "0.png", 10)
        _save(tmp_path / "flat" / "b" / "0.png", 200)
        arguments += ["--data", f"folder:{tmp_path / 'flat'}", "--part", "unlabeled"]
    else:
        arguments += ["--top", "4"]
    capsys.readouterr()
    out = tmp_path / "out.csv"
    assert main(["predict", *arguments, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error
    assert not out.exists()


def test_the_csv_is_complete_or_absent(classifier_run, tmp_path, monkeypatch):
    run, _ = classifier_run
    out = tmp_path / "predictions.csv"
    out.write_text("an earlier file\n")

    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr("fewlabels.atomic.os.fsync", interrupted)  # stopped while writing
    assert main(["predict", "--checkpoint", str(run), "--out", str(out)]) == 130
    assert out.read_text() == "an earlier file\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["predictions.csv"]
    monkeypatch.undo()
    fresh = tmp_path / "fresh" / "predictions.csv"
    monkeypatch.setattr("fewlabels.atomic.os.fsync", interrupted)
    assert main(["predict", "--checkpoint", str(run), "--out", str(fresh)]) == 130
    assert list(fresh.parent.iterdir()) == []


# --- the ids the data layer keeps --------------------------------------------------------


def test_folder_ids_are_the_read_files_and_survive_subset_resize_and_held_out_split(tmp_path):
    for offset, name in ((0, "cat"), (100, "dog")):
        for index in range(5):
            _save(tmp_path / name / f"{index}.png", offset + 10 * index)
    (tmp_path / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # skipped
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        train = load_dataset(f"folder:{tmp_path}", image_size=4).train
    expected = [f"cat/{i}.png" for i in range(5)] + [f"dog/{i}.png" for i in (0, 1, 2, 4)]
    assert train.ids == expected
    assert train.subset(torch.tensor([8, 0, 5])).ids == ["dog/4.png", "cat/0.png", "dog/0.png"]
    with pytest.warns(UserWarning):
        held_train, held_test, _ = train_and_test(f"folder:{tmp_path}", 4, 1, "skip")
    assert sorted(held_train.ids + held_test.ids) == sorted(expected)
    for part in (held_train, held_test):
        for image_id, image in zip(part.ids, part.images, strict=True):
            assert image_id == expected[(train.images == image).all(dim=(1, 2, 3)).nonzero()
                                        .flatten()[0]]

    stored = ImageSet(torch.zeros(2, 1, 6, 6, dtype=torch.uint8), None, [], "x", ["a", "b"])
    bundle = DataBundle("x", "x", DatasetParts(train=lambda: stored), image_size=3)
    assert bundle.train.image_size == (3, 3) and bundle.train.ids == ["a", "b"]
    assert load_dataset("fashion-mnist-sample").test.ids is None  # no files: PART/INDEX ids
    with pytest.raises(ValueError, match="2 images but 1 ids"):
        ImageSet(torch.zeros(2, 1, 6, 6, dtype=torch.uint8), None, [], "x", ["a"])
