"""`fewlabels export`, `load_backbone` and `fewlabels embed`: the backbone and the embeddings
out of a run, under the backbone's own key names, loaded strictly (field notes: "checkpoint
key prefixes that silently leave the backbone random")."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fewlabels
from fewlabels.cli import main
from fewlabels.data import load_dataset
from fewlabels.data.bundle import resize_images
from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.errors import UserError
from fewlabels.evaluate import extract_features, file_digest
from fewlabels.models import build_backbone, load_backbone
from fewlabels.runs import load_method, load_pretrained


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("exported") / "backbone.safetensors"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion-mnist-sample").test.images[:64]


def _metadata(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]  # progress lines may come first
    assert last.startswith("fewlabels: error:") and "Traceback" not in error
    return last


def test_export_holds_the_backbone_under_its_own_names_with_its_metadata(run_dir, exported):
    pretrained = load_pretrained(run_dir)
    run = pretrained.checkpoint["run"]
    tensors = load_file(str(exported))
    own = pretrained.network.state_dict()
    assert sorted(tensors) == sorted(own)  # no "backbone." or "teacher." prefix
    for key, value in own.items():
        assert torch.equal(tensors[key], value), key

    metadata = _metadata(exported)
    assert metadata["format"] == "fewlabels-backbone" and metadata["format_version"] == "1"
    assert json.loads(metadata["architecture"]) == run["backbone"]
    preprocessing = json.loads(metadata["preprocessing"])
    info = run["data"]["info"]
    assert preprocessing["image_size"] == info["image_size"] == 28
    assert preprocessing["channels"] == info["channels"] == 1
    assert preprocessing["mean"] == info["mean"] and preprocessing["std"] == info["std"]
    assert json.loads(metadata["feature_dim"]) == pretrained.network.feature_dim
    source = json.loads(metadata["source"])
    assert source == {"method": "simclr", "representation": "backbone",
                      "step": pretrained.checkpoint["step"],
                      "checkpoint_sha256": file_digest(checkpoint_path(run_dir)),
                      "data": "fashion-mnist-sample",
                      "fewlabels_version": fewlabels.__version__}


def test_loaded_backbone_gives_exactly_the_runs_features(run_dir, exported, test_images):
    pretrained = load_pretrained(run_dir)
    loaded = load_backbone(exported)
    assert not loaded.network.training
    assert loaded.feature_dim == pretrained.network.feature_dim
    mean, std = loaded.preprocessing.mean, loaded.preprocessing.std
    assert list(mean) == list(pretrained.data.mean) and list(std) == list(pretrained.data.std)
    expected = extract_features(pretrained.network, test_images, pretrained.data.mean,
                                pretrained.data.std, batch_size=32)
    assert torch.equal(extract_features(loaded.network, test_images, mean, std, batch_size=32),
                       expected)
    # the docstring's way: preprocess a uint8 batch, run the network
    with torch.no_grad():
        features = loaded.network(loaded.preprocess(test_images))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # and they are trained weights, not a random network of the same shape
    torch.manual_seed(0)
    fresh = build_backbone("convnet", in_channels=1, image_size=28, width=4, depth=2)
    random = extract_features(fresh, test_images, mean, std)
    assert not torch.allclose(random, expected)


def test_preprocessing_resizes_and_standardises_like_the_data_path(exported, test_images):
    preprocessing = load_backbone(exported).preprocessing
    by_hand = (test_images.float() / 255 - preprocessing.mean[0]) / preprocessing.std[0]
    torch.testing.assert_close(preprocessing(test_images), by_hand, rtol=0, atol=1e-6)
    larger = resize_images(test_images, 56)
    assert torch.equal(preprocessing(larger), preprocessing(resize_images(larger, 28)))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        preprocessing(test_images.expand(-1, 3, -1, -1))


def _tampered(exported, tmp_path, change):
    tensors = load_file(str(exported))
    change(tensors)
    path = tmp_path / "tampered.safetensors"
    save_file(tensors, str(path), metadata=_metadata(exported))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.__setitem__("backbone.stages.0.weight", t.pop("stages.0.weight")),
         "1 missing tensor ('stages.0.weight'); "
         "1 unexpected tensor ('backbone.stages.0.weight')"),
        (lambda t: t.pop("stages.15.running_mean"), "1 missing tensor ('stages.15.running_mean')"),
        (lambda t: t.__setitem__("stages.14.weight", t["stages.14.weight"][:1].clone()),
         "1 tensor of the wrong shape ('stages.14.weight')"),
    ],
    ids=["renamed", "removed", "reshaped"],
)
def test_a_tampered_export_is_refused_in_one_line(exported, tmp_path, capsys, change,
                                                    message):
    keys = set(load_file(str(exported)))
    assert {"stages.0.weight", "stages.14.weight", "stages.15.running_mean"} <= keys
    path = _tampered(exported, tmp_path, change)
    with pytest.raises(UserError) as caught:
        load_backbone(path)
    text = str(caught.value)
    assert "\n" not in text and message in text and "export the run again" in text
    status = main(["embed", "--checkpoint", str(path), "--out", str(tmp_path / "x.npy")])
    assert status == 2 and message in _one_line_error(capsys)
    assert not (tmp_path / "x.npy").exists()


def test_a_file_that_is_not_an_export_is_refused(run_dir, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, str(plain))
    for path in (junk, plain, checkpoint_path(run_dir)):
        with pytest.raises(UserError, match="is not a fewlabels export") as caught:
            load_backbone(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="no file at"):
        load_backbone(tmp_path / "missing.safetensors")


def test_export_refuses_overwriting_the_checkpoint_and_unknown_representations(
        run_dir, tmp_path, capsys):
    before = checkpoint_path(run_dir).read_bytes()
    out = str(checkpoint_path(run_dir))
    assert main(["export", "--checkpoint", str(run_dir), "--out", out]) == 2
    assert "is the run's checkpoint" in _one_line_error(capsys)
    assert checkpoint_path(run_dir).read_bytes() == before
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "b.st"),
                 "--representation", "teacher"]) == 2
    assert "no representation 'teacher'" in _one_line_error(capsys)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, test_images):
    """A small dataset with all three parts; its test images are 32 px, so embedding resizes
    them to the network's 28 px as evaluation does."""
    sample = load_dataset("fashion-mnist-sample")
    path = tmp_path_factory.mktemp("npz") / "small.npz"
    np.savez(path, x_train=sample.train.images[:48].numpy(),
             y_train=sample.train.labels[:48].numpy(),
             x_test=resize_images(test_images[:40], 32).numpy(),
             y_test=sample.test.labels[:40].numpy(),
             x_unlabeled=sample.train.images[100:124].numpy())
    return f"npz:{path}"


@pytest.mark.parametrize("part", ["train", "test", "unlabeled"])
def test_embed_writes_rows_in_dataset_order_from_a_run_and_from_an_export(
        run_dir, exported, small_npz, tmp_path, capsys, part):
    pretrained = load_pretrained(run_dir)
    images = getattr(load_dataset(small_npz, image_size=28), part).images
    expected = extract_features(pretrained.network, images, pretrained.data.mean,
                                pretrained.data.std).numpy()
    assert len(expected) == {"train": 48, "test": 40, "unlabeled": 24}[part]
    for source, name in ((run_dir, "from_run.npy"), (exported, "from_export.npy")):
        out = tmp_path / name
        assert main(["embed", "--checkpoint", str(source), "--data", small_npz,
                     "--part", part, "--batch-size", "16", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"wrote {len(expected)} rows of {expected.shape[1]} float32 features" in printed
        features = np.load(out)
        assert features.dtype == np.float32 and features.shape == expected.shape
        assert np.array_equal(features, expected)
        assert not (tmp_path / name.replace(".npy", ".names.txt")).exists()  # no file names
    # rows are in dataset order: each row is its own image's features
    alone = extract_features(pretrained.network, images[5:6], pretrained.data.mean,
                             pretrained.data.std).numpy()
    assert np.allclose(features[5], alone[0], atol=1e-5)
    assert not np.allclose(features[4], alone[0], atol=1e-5)


def test_embed_refuses_a_missing_part_and_a_representation_an_export_lacks(
        exported, tmp_path, capsys):
    out = str(tmp_path / "x.npy")
    assert main(["embed", "--checkpoint", str(exported), "--part", "unlabeled",
                 "--out", out]) == 2
    assert "has no unlabeled part; choose --part from: train, test" in _one_line_error(capsys)
    assert main(["embed", "--checkpoint", str(exported), "--representation", "teacher",
                 "--out", out]) == 2
    assert "holds only the backbone" in _one_line_error(capsys)


def test_embed_of_a_folder_writes_the_file_name_of_every_row(run_dir, exported, tmp_path,
                                                               capsys):
    folder = tmp_path / "shoes"
    rng = np.random.default_rng(0)
    names = ["train/boot/b1.png", "train/boot/b2.png", "train/sandal/a.png",
             "train/sandal/sub/c.png"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 30), dtype=np.uint8)).save(folder / name)
    (folder / "train/boot/0-broken.png").write_bytes(b"not an image")  # skipped, no row
    spec = f"folder:{folder}"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        images = load_dataset(spec, image_size=28).train.images
    loaded = load_backbone(exported)
    expected = extract_features(loaded.network, images, loaded.preprocessing.mean,
                                loaded.preprocessing.std).numpy()
    for source in (run_dir, exported):
        out = tmp_path / "shoes.npy"
        assert main(["embed", "--checkpoint", str(source), "--data", spec,
                     "--out", str(out)]) == 0
        assert "their file names to" in capsys.readouterr().out
        assert np.array_equal(np.load(out), expected)
        assert (tmp_path / "shoes.names.txt").read_text().splitlines() == names
    # each row is the features of the file it names
    single_folder = tmp_path / "single"
    single_folder.mkdir()
    (single_folder / "a.png").write_bytes((folder / names[2]).read_bytes())
    alone = load_dataset(f"folder:{single_folder}", image_size=28).train.images
    single = extract_features(loaded.network, alone[:1], loaded.preprocessing.mean,
                              loaded.preprocessing.std).numpy()
    assert np.allclose(np.load(tmp_path / "shoes.npy")[2], single[0], atol=1e-5)


def test_a_dino_export_is_the_teacher_under_its_own_names(tmp_path, test_images):
    run = tmp_path / "dino"
    assert main(["pretrain", "--method", "dino", "--out", str(run), "--backbone", "vit",
                 "--width", "16", "--depth", "1", "--heads", "2", "--data",
                 "fashion-mnist-sample", "--max-images", "64", "--batch-size", "32",
                 "--epochs", "1", "--out-dim", "64", "--hidden-dim", "32",
                 "--bottleneck-dim", "16", "--local-views", "2", "--no-progress"]) == 0
    path = tmp_path / "dino.safetensors"
    assert main(["export", "--checkpoint", str(run), "--out", str(path)]) == 0
    method, _ = load_method(run)
    teacher, student = method.teacher_backbone.state_dict(), method.backbone.state_dict()
    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(teacher)  # no "teacher_backbone." prefix
    assert all(torch.equal(tensors[key], teacher[key]) for key in teacher)
    assert not all(torch.equal(tensors[key], student[key]) for key in student)
    assert json.loads(_metadata(path)["source"])["representation"] == "teacher"
    loaded = load_backbone(path)
    mean, std = loaded.preprocessing.mean, loaded.preprocessing.std
    assert torch.equal(extract_features(loaded.network, test_images, mean, std),
                       extract_features(method.teacher_backbone, test_images, mean, std))
