"""`fewlabels fewshot` end to end on the sample data: every method trains a handful of
steps on a 4-wide ConvNet, writes its result, and bad input is one line with status 2."""

import json

import pytest

from fewlabels.cli import main

TINY = ["--data", "fashion-mnist-sample", "--ways", "3", "--shots", "2", "--queries", "3",
        "--episodes", "12", "--width", "4", "--depth", "2", "--train-steps", "3",
        "--base-images-per-class", "20", "--support-steps", "5", "--inner-steps", "1",
        "--test-inner-steps", "2", "--meta-batch", "2"]


def _result(out):
    return json.loads((out / "result.json").read_text())


def _check_result(record, method, ways=3, shots=2, queries=3, episodes=12):
    assert record["method"] == method
    assert (record["ways"], record["shots"], record["queries"], record["episodes"]) == (
        ways, shots, queries, episodes)
    assert 0 <= record["mean"] <= 1 and record["interval"] >= 0
    split = record["class_split"]
    assert set(split["base"]).isdisjoint(split["novel"]) and len(split["novel"]) == 5
    assert record["settings"]["data"] == "fashion-mnist-sample"
    assert len(record["settings"]["episodes_fingerprint"]) == 16


@pytest.mark.parametrize("method", ["protonet", "baseline", "baseline++", "maml", "finetune"])
def test_each_training_method_runs_end_to_end(tmp_path, capsys, method):
    capsys.readouterr()
    assert main(["fewshot", "--method", method, *TINY, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"{method}: 3-way 2-shot accuracy")
    record = _result(tmp_path)
    _check_result(record, method)
    if method not in ("baseline", "baseline++", "finetune"):
        assert record["settings"]["method"]["training"]["steps"] == 3
    if method == "finetune":
        assert record["settings"]["method"]["from"] == "supervised training on the base classes"


def test_first_order_maml_and_the_options_are_recorded(tmp_path):
    assert main(["fewshot", "--method", "maml", *TINY, "--first-order", "true",
                 "--inner-lr", "0.05", "--out", str(tmp_path)]) == 0
    record = _result(tmp_path)
    assert record["settings"]["method"]["order"] == "first"
    assert record["settings"]["options"]["inner_lr"] == 0.05


def test_pixels_are_deterministic_and_the_seed_changes_episodes_and_split(tmp_path):
    arguments = ["fewshot", "--method", "pixels", "--data", "fashion-mnist-sample",
                 "--ways", "5", "--shots", "1", "--episodes", "30"]
    assert main([*arguments, "--out", str(tmp_path / "a")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "b")]) == 0
    assert main([*arguments, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    first, again, other = (_result(tmp_path / name) for name in "abc")
    assert first["mean"] == again["mean"] and first["class_split"] == again["class_split"]
    assert (first["settings"]["episodes_fingerprint"]
            == again["settings"]["episodes_fingerprint"]
            != other["settings"]["episodes_fingerprint"])
    assert first["mean"] > 0.3  # raw pixels beat 5-way chance (20%) on Fashion-MNIST


def test_features_of_a_pretraining_run_and_protonet_started_from_it(run_dir, tmp_path):
    assert main(["fewshot", "--method", "features", "--init", str(run_dir), *TINY,
                 "--feature-normalization", "l2", "--out", str(tmp_path / "features")]) == 0
    record = _result(tmp_path / "features")
    _check_result(record, "features")
    assert record["settings"]["init"] == str(run_dir)
    assert record["settings"]["method"]["feature_normalization"] == "l2"
    assert list((run_dir / "features").glob("*.pt"))  # the novel images' features, cached
    assert main(["fewshot", "--method", "protonet", "--init", str(run_dir), *TINY,
                 "--novel-classes", "Trouser,Bag,Sneaker",
                 "--out", str(tmp_path / "protonet")]) == 0
    record = _result(tmp_path / "protonet")
    assert record["class_split"]["novel_names"] == ["Trouser", "Sneaker", "Bag"]
    assert record["settings"]["backbone"]["width"] == 4
    assert main(["fewshot", "--method", "finetune", "--init", str(run_dir), *TINY,
                 "--finetune-layers", "2", "--finetune-steps", "2",
                 "--out", str(tmp_path / "finetune")]) == 0
    record = _result(tmp_path / "finetune")
    assert record["settings"]["method"]["from"] == "pretraining run (no base-class training)"
    assert record["settings"]["method"]["layers"] == "2"


@pytest.mark.parametrize("arguments, message", [
    (["--method", "pixels", "--ways", "6"], "--ways 6 is more than the 5 novel classes"),
    (["--method", "pixels", "--shots", "90", "--queries", "20"],
     "--shots 90 + --queries 20 is more than the 100 images"),
    (["--method", "prototypes"], "unknown few-shot method 'prototypes'; choose one of"),
    (["--method", "features"], "give --init RUN"),
    (["--method", "features", "--init", "NOT_A_RUN"], "no checkpoint at NOT_A_RUN"),
    (["--method", "pixels", "--novel-classes", "Cat"], "unknown class 'Cat'"),
    (["--method", "maml", "--inner-steps", "0"], "--inner-steps must be at least 1"),
    (["--method", "finetune", "--finetune-layers", "last"], "--finetune-layers must be all"),
    (["--method", "pixels", "--devices", "2"], "--method pixels runs on one device"),
])
def test_bad_input_is_one_line_with_status_2(tmp_path, capsys, arguments, message):
    capsys.readouterr()
    status = main(["fewshot", *arguments, "--data", "fashion-mnist-sample",
                   "--out", str(tmp_path)])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "result.json").exists()


def test_help_lists_every_method(capsys):
    with pytest.raises(SystemExit):
        main(["fewshot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for method in ("protonet", "baseline++", "maml", "features", "pixels"):
        assert f"{method}:" in text
    assert "--first-order" in text and "--inner-lr" in text and "--train-minutes" in text
