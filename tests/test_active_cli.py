"""`fewlabels active simulate` end to end on tiny data, and the labelling loop of `fewlabels
active next`: its CSV files, their checks, its resumable state and its stable ids."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.active import fit_round_classifier
from fewlabels.active.pool import FeatureSource, load_pool
from fewlabels.active.state import ActiveState
from fewlabels.cli import main
from fewlabels.data.labeled import train_and_test
from fewlabels.evaluate import RawPixels
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

# classes told apart by where an 8x8 image is bright
_ROWS, _COLUMNS = np.indices((8, 8))
PATTERNS = {"top": _ROWS < 4, "left": _COLUMNS < 4, "diagonal": _ROWS < _COLUMNS}


def test_simulate_compares_strategies_with_random_over_seeds(run_dir, tmp_path, capsys):
    out = tmp_path / "active"
    assert main(["active", "simulate", "--init", str(run_dir), "--data",
                 "fashion-mnist-sample", "--start", "10", "--batch", "5", "--rounds", "2",
                 "--seeds", "2", "--strategy", "margin,bald", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| random |" in printed and "| bald |" in printed
    assert (out / "active.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "active.json").read_text())
    curves = results["curves"]
    assert sorted((c["strategy"], c["seed"]) for c in curves) == sorted(
        (s, seed) for s in ("random", "margin", "bald") for seed in (0, 1))
    for curve in curves:
        assert [r["labels"] for r in curve["rounds"]] == [10, 15, 20]
        assert len(set(curve["queried"])) == 20  # never the same image twice
    by_seed = {}
    for curve in curves:  # a seed's first batch is the same for every strategy
        by_seed.setdefault(curve["seed"], set()).add(tuple(sorted(curve["queried"][:10])))
    assert all(len(firsts) == 1 for firsts in by_seed.values())
    assert by_seed[0] != by_seed[1]

    # the recorded accuracy is the probe's on the test part, recomputed here
    curve = next(c for c in curves if c["strategy"] == "margin" and c["seed"] == 1)
    train, test, _ = train_and_test("fashion-mnist-sample", 28, 1, "skip")
    cache = sorted((run_dir / "features").glob("*.pt"), key=lambda p: p.stat().st_size)
    stored = [torch.load(p, weights_only=True)["features"] for p in cache]
    train_features = next(f for f in stored if len(f) == len(train))
    test_features = next(f for f in stored if len(f) == len(test))
    labeled = torch.tensor(curve["queried"][:15])
    classifier = fit_round_classifier(
        train_features[labeled], train.labels[labeled], num_classes=10,
        preprocessing=FeaturePreprocessing.fit(train_features), seed=1)
    accuracy = (classifier.probabilities(test_features).argmax(1) == test.labels).float().mean()
    assert curve["rounds"][1]["accuracy"] == pytest.approx(accuracy.item(), abs=1e-6)
    summary = next(s for s in results["summary"] if s["strategy"] == "margin")
    values = [c["rounds"][1]["accuracy"] for c in curves if c["strategy"] == "margin"]
    assert summary["mean"][1] == pytest.approx(sum(values) / 2)


# --- the labelling loop ------------------------------------------------------------------

def _write_folder(root, per_class=6):
    """Loose 8x8 grayscale PNGs whose bright part tells their class; names do not."""
    rng = np.random.default_rng(0)
    truth = {}
    for index in range(per_class * 3):
        name = list(PATTERNS)[index % 3]
        mean = np.where(PATTERNS[name], 200.0, 50.0)
        pixels = np.clip(rng.normal(mean, 20), 0, 255).astype(np.uint8)
        file = f"img{index:02d}.png"
        Image.fromarray(pixels).save(root / file)
        truth[file] = name
    return truth


def _rows(path):
    with open(path, encoding="utf-8", newline="") as stream:
        return list(csv.reader(stream))


def _write_rows(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerows(rows)


def _fill(path, truth):
    rows = _rows(path)
    _write_rows(path, [rows[0]] + [[r[0], r[1], truth[r[0]], *r[3:]] for r in rows[1:]])


def _next(folder, state, *extra):
    return main(["active", "next", "--data", f"folder:{folder}", "--state", str(state),
                 "--batch", "3", *extra])


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    return root, _write_folder(root)


def test_next_proposes_labels_reads_them_and_guesses(folder, tmp_path, capsys):
    root, truth = folder
    state = tmp_path / "state"
    assert _next(root, state, "--classes", "top,left,diagonal") == 0
    rows = _rows(state / "to-label-001.csv")
    assert rows[0] == ["id", "path", "label", "guess", "confidence"]
    # the cold start: one image of each kind, no guess yet
    assert sorted(truth[r[0]] for r in rows[1:]) == ["diagonal", "left", "top"]
    assert all(r[1] == str(root / r[0]) and r[2:] == ["", "", ""] for r in rows[1:])
    _fill(state / "to-label-001.csv", truth)
    capsys.readouterr()
    assert _next(root, state) == 0
    assert "round 2: 3 labeled images (3 classes) of 18" in capsys.readouterr().out
    saved = ActiveState.load(state)
    assert saved.labels == {r[0]: truth[r[0]] for r in rows[1:]}
    second = _rows(state / "to-label-002.csv")[1:]
    assert len(second) == 3 and not {r[0] for r in second} & set(saved.labels)
    for row in second:  # an easy problem: the probe guesses right, confidently
        assert row[3] == truth[row[0]] and 0.5 < float(row[4]) <= 1.0


@pytest.mark.parametrize("case, message", [
    ("blank", "to-label-001.csv row 3 (id '{1}') has no label"),
    ("unknown", "to-label-001.csv row 2 (id '{0}'): unknown label 'grey'; use one of: top"),
    ("fields", "to-label-001.csv row 4: 6 fields where the header has 5"),
    ("stranger", "to-label-001.csv row 2: id 'nobody.png' was not asked for"),
    ("missing row", "no row for id '{2}' asked for in this round"),
    ("header", "the header line has no label column"),
])
def test_a_bad_csv_row_gets_one_line_naming_it(folder, tmp_path, capsys, case, message):
    root, truth = folder
    state = tmp_path / "state"
    assert _next(root, state, "--classes", "top,left,diagonal") == 0
    path = state / "to-label-001.csv"
    _fill(path, truth)
    rows = _rows(path)
    ids = [r[0] for r in rows[1:]]
    if case == "blank":
        rows[2][2] = ""
    elif case == "unknown":
        rows[1][2] = "grey"
    elif case == "fields":
        rows[3].append("extra")
    elif case == "stranger":
        rows[1][0] = "nobody.png"
    elif case == "missing row":
        rows = rows[:3]
    else:
        rows[0][2] = "class"
    _write_rows(path, rows)
    before = (state / "state.json").read_text()
    capsys.readouterr()
    assert _next(root, state) == 2
    error = capsys.readouterr().err.strip()
    assert message.format(*ids) in error, error
    assert "\n" not in error and "Traceback" not in error
    assert (state / "state.json").read_text() == before  # nothing changed


def test_the_state_resumes_after_a_crash_between_its_files(folder, tmp_path, monkeypatch,
                                                           capsys):
    root, truth = folder
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert _next(root, whole, "--classes", "top,left,diagonal") == 0
    _fill(whole / "to-label-001.csv", truth)
    shutil.copytree(whole, interrupted)
    assert _next(root, whole) == 0

    import fewlabels.active.state as state_module
    real_write = state_module.atomic_write_text

    def crash_on_the_csv(path, text):
        if path.name.startswith("to-label-"):
            raise KeyboardInterrupt  # stopped after the state, before the CSV
        real_write(path, text)

    monkeypatch.setattr(state_module, "atomic_write_text", crash_on_the_csv)
    assert _next(root, interrupted) == 130
    monkeypatch.undo()
    assert not (interrupted / "to-label-002.csv").exists()
    capsys.readouterr()
    assert _next(root, interrupted) == 0
    assert "wrote it again" in capsys.readouterr().out
    assert ((interrupted / "to-label-002.csv").read_text()
            == (whole / "to-label-002.csv").read_text())
    resumed, uninterrupted = ActiveState.load(interrupted), ActiveState.load(whole)
    assert resumed.labels == uninterrupted.labels and resumed.round == uninterrupted.round == 2
    # and the loop goes on from there exactly as the uninterrupted one
    for state in (whole, interrupted):
        _fill(state / "to-label-002.csv", truth)
        assert _next(root, state) == 0
    assert ((interrupted / "to-label-003.csv").read_text()
            == (whole / "to-label-003.csv").read_text())


def test_ids_stay_with_their_images_when_the_pool_order_changes(folder, tmp_path, capsys):
    root, truth = folder
    fixed = FeatureSource(RawPixels([0.5], [0.25]), 8, None, "raw pixels")
    before, _ = load_pool(f"folder:{root}", fixed)
    # a new image that sorts first moves every other image one position on
    Image.fromarray(np.where(PATTERNS["top"], 200, 50).astype(np.uint8)).save(root / "aaa.png")
    after, _ = load_pool(f"folder:{root}", fixed)
    assert after.ids[0] == "aaa.png" and after.ids[1:] == before.ids
    some = ["img04.png", "img11.png", "img17.png"]
    assert torch.equal(after.features[after.positions(some)],
                       before.features[before.positions(some)])
    assert after.positions(some).tolist() == [p + 1 for p in before.positions(some).tolist()]

    # the loop keeps every label on its image across the change
    (root / "aaa.png").unlink()
    state = tmp_path / "state"
    assert _next(root, state, "--classes", "top,left,diagonal") == 0
    _fill(state / "to-label-001.csv", truth)
    asked = {r[0] for r in _rows(state / "to-label-001.csv")[1:]}
    Image.fromarray(np.where(PATTERNS["top"], 200, 50).astype(np.uint8)).save(root / "aaa.png")
    truth["aaa.png"] = "top"
    assert _next(root, state) == 0
    assert set(ActiveState.load(state).labels) == asked
    second = [r for r in _rows(state / "to-label-002.csv")[1:]]
    assert not {r[0] for r in second} & asked
    assert all(r[3] == truth[r[0]] for r in second)


def test_a_folder_without_class_names_is_refused_before_any_feature_is_extracted(
        folder, tmp_path, capsys, monkeypatch):
    import fewlabels.active.pool as pool_module

    def refuse(*args, **kwargs):
        raise AssertionError("features extracted before the classes were checked")

    monkeypatch.setattr(pool_module.FeatureSource, "__call__", refuse)
    root, _ = folder
    assert _next(root, tmp_path / "state") == 2
    error = capsys.readouterr().err.strip()
    assert "fewer than 2 classes" in error and "--classes" in error and "\n" not in error
    assert not (tmp_path / "state" / "state.json").exists()
