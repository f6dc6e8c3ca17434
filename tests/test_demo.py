"""`fewlabels demo` wiring: what it pretrains, what it evaluates, and that a second run reuses
the finished pretraining (the real end-to-end run is in docs/benchmarks.md; it takes minutes)."""

from fewlabels.cli import main
from fewlabels.commands import demo


def test_demo_pretrains_then_evaluates_and_reuses_a_finished_run(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_pretrain(args):
        calls.append(("pretrain", args))
        (tmp_path / "out/simclr").mkdir(parents=True)

    monkeypatch.setattr("fewlabels.commands.pretrain.run", fake_pretrain)
    monkeypatch.setattr("fewlabels.commands.evaluate.run",
                        lambda args: calls.append(("evaluate", args)))
    assert main(["demo", "--out", str(tmp_path / "out"), "--minutes", "2",
                 "--data", "fashion-mnist-sample"]) == 0
    (kind, pretrain), (kind2, evaluate) = calls
    assert kind == "pretrain" and kind2 == "evaluate"
    assert pretrain.method == "simclr" and pretrain.budget_minutes == 2.0
    assert pretrain.data == "fashion-mnist-sample"
    assert evaluate.labels_per_class == [1, 10, 100, None]
    assert evaluate.protocol == ["knn", "linear", "finetune", "semi"]
    assert evaluate.finetune_steps == demo.DEMO_FINETUNE_STEPS
    assert (evaluate.semi_method, evaluate.semi_steps) == ("fixmatch", demo.DEMO_SEMI_STEPS)
    assert evaluate.semi_unlabeled == demo.DEMO_SEMI_UNLABELED
    assert evaluate.semi_option == ["backbone-lr-scale=0"]
    assert evaluate.baselines == ["raw", "random", "supervised"]
    assert evaluate.plot.endswith("label_efficiency.png")

    # a finished run is reused: only the evaluation runs again
    calls.clear()
    finished = {"finished": True, "run": {"data": {"spec": "fashion-mnist-sample"}}}
    monkeypatch.setattr(demo, "load_checkpoint", lambda path: finished)
    monkeypatch.setattr(demo, "checkpoint_path", lambda path: tmp_path)
    assert main(["demo", "--out", str(tmp_path / "out"), "--data", "fashion-mnist-sample"]) == 0
    assert [kind for kind, _ in calls] == ["evaluate"]
    assert "reusing the finished run" in capsys.readouterr().out

    # ... but never for other data: one line, status 2, the run left alone
    calls.clear()
    assert main(["demo", "--out", str(tmp_path / "out"), "--data", "mnist:/x"]) == 2
    error = capsys.readouterr().err
    assert "holds a demo run on fashion-mnist-sample, not mnist:/x" in error
    assert error.count("\n") == 1 and calls == []


def test_demo_data_falls_back_to_the_shipped_sample(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "candidate_directories", lambda: [tmp_path])
    assert demo.default_demo_data() == "fashion-mnist-sample"
