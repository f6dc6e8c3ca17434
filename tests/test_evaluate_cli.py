"""`fewlabels evaluate` and `fewlabels list` end to end on the shipped sample."""

import json

import pytest

from fewlabels.cli import main


def test_evaluate_prints_a_table_and_writes_json_and_plot(run_dir, tmp_path, capsys):
    status = main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                   "--protocol", "knn,linear", "--labels-per-class", "1,10", "--seeds", "2",
                   "--baselines", "raw,random,supervised", "--json", str(tmp_path / "r.json"),
                   "--plot", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert status == 0
    for row in ("simclr", "raw pixels", "random init", "supervised from scratch"):
        assert row in out
    assert "1/class" in out and "10/class" in out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["settings"]["seeds"] == [0, 1]
    accuracies = [v for cell in results["cells"] for v in cell["values"]]
    assert len(accuracies) == 2 * 2 * (3 * 2 + 1)  # budgets x seeds x (3 reps x 2 protocols + 1)
    assert all(0.0 <= v <= 1.0 for v in accuracies)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # the budget is every label used: no validation labels, the probe's decay cross-validated
    # within the labeled images (fixed at 1 label per class), and each cell says what it used
    assert results["settings"]["validation_per_class"] == 0
    for cell in results["cells"]:
        assert cell["labels_used_per_class"] == cell["labels_per_class"]
        assert cell["labels_used"] == 10 * cell["labels_per_class"]
        if cell["protocol"] == "linear":
            chosen_by = {d["weight_decay_chosen_by"] for d in cell["details"]}
            assert chosen_by == {"default" if cell["labels_per_class"] == 1 else "cross-validation"}
    assert "cross-validated within the budget's labels" in out
    # features are cached per checkpoint and dataset
    assert any((run_dir / "features").iterdir())


def test_evaluate_counts_validation_labels_in_the_budget(run_dir, tmp_path, capsys):
    status = main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                   "--protocol", "knn,linear", "--labels-per-class", "1", "--seeds", "1",
                   "--baselines", "none", "--validation-per-class", "3",
                   "--json", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert status == 0
    results = json.loads((tmp_path / "v.json").read_text())
    assert results["settings"]["validation_per_class"] == 3
    assert results["settings"]["labels_used"]["1/class"] == {
        "knn": {"per_class": 1, "total": 10}, "linear": {"per_class": 4, "total": 40}}
    used = {c["protocol"]: (c["labels_used_per_class"], c["labels_used"])
            for c in results["cells"]}
    assert used == {"knn": (1, 10), "linear": (4, 40)}
    linear = next(c for c in results["cells"] if c["protocol"] == "linear")
    assert linear["details"][0]["weight_decay_chosen_by"] == "validation"
    assert "3 more labeled images per class" in out and "k+3" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--labels-per-class", "1000"], "ask for fewer labels per class"),
        (["--labels-per-class", "ten"], "not a number of labels per class"),
        (["--protocol", "svm"], "unknown 'svm'"),
        (["--data", "cifar10:/no/such/place"], "no such file or directory"),
    ],
)
def test_evaluate_bad_input(run_dir, capsys, arguments, message):
    status = main(["evaluate", "--checkpoint", str(run_dir), "--data", "fashion-mnist-sample",
                   "--baselines", "none", *arguments])
    error = capsys.readouterr().err
    assert status == 2
    last_line = error.strip().splitlines()[-1]  # progress lines may come first
    assert last_line.startswith("fewlabels: error:") and message in last_line
    assert "Traceback" not in error


def test_evaluate_needs_a_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["methods", "datasets", "backbones"])
def test_list(capsys, what):
    assert main(["list", what]) == 0
    listed = capsys.readouterr().out
    expected = {"methods": "simclr", "datasets": "fashion-mnist", "backbones": "resnet18"}[what]
    assert expected in listed
