"""Runs to look at: class names in the plots, the TensorBoard log (``--log tensorboard``) and the old/new
panels of ``cil-train compare``."""

from __future__ import annotations

import json
import sys

import pytest

from cil_train import report
from cil_train.cli import main


@pytest.fixture
def captured_figures(monkeypatch):
    """Figures that the report code saves: (file name, tick labels of x, tick labels of y, number of axes)."""
    pytest.importorskip("matplotlib")
    seen = []

    def capture(fig, path):
        ax = fig.axes[0]
        seen.append((path.name, [t.get_text() for t in ax.get_xticklabels()],
                     [t.get_text() for t in ax.get_yticklabels()], len([a for a in fig.axes if a.get_title()])))

    monkeypatch.setattr(report, "_save_figure", capture)
    return seen


def test_plots_use_the_class_names_of_the_source(tiny, captured_figures):
    argv, out = tiny("--method", "finetune", "--epochs", "1", "--plots")
    assert main(argv) == 0
    names = json.loads((out / "metrics.json").read_text())["class_names"]
    assert names[:2] != ["0", "1"] and all(isinstance(n, str) for n in names)
    by_file = {name: (x, y) for name, x, y, _ in captured_figures}
    assert by_file["confusion_matrix.png"] == (names, names)
    assert by_file["weight_norms.png"][0] == names


def test_compare_draws_all_old_and_new_accuracy(tiny, tmp_path, captured_figures, monkeypatch):
    from cil_train import compare

    monkeypatch.setattr(compare, "_save_figure", report._save_figure)
    folders = []
    for seed in ("1", "2"):
        argv, out = tiny("--method", "finetune", "--seed", seed, "--epochs", "1", out=f"s{seed}")
        assert main(argv) == 0
        folders.append(str(out))
    assert main(["compare", *folders, "--out", str(tmp_path / "cmp")]) == 0
    name, _x, _y, titled_axes = captured_figures[-1]
    assert name == "comparison.png" and titled_axes == 3
    curve = compare.mean_curve([compare.load_run(f) for f in folders])
    metrics = [json.loads((tmp_path / f"s{s}" / "metrics.json").read_text()) for s in ("1", "2")]
    assert curve["old_acc"][0] is None  # no old classes in phase 1
    assert curve["new_acc"][-1] == pytest.approx(sum(m["new_acc"][-1] for m in metrics) / 2)


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_log_records_losses_lr_accuracies_and_the_matrix(tiny):
    pytest.importorskip("tensorboard")
    argv, out = tiny("--method", "icarl", "--log", "tensorboard")
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    acc = _scalars(out / "tensorboard")
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "eval/acc", "eval/old_acc", "eval/new_acc", "eval/acc_task_1",
                "eval/acc_task_3", "eval/nme_acc", "summary/avg_inc_acc", "summary/forgetting"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    epochs = sum(len(p["epoch_losses"]) for p in m["phases"])
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, epochs + 1))
    assert [e.value for e in loss] == pytest.approx([v for p in m["phases"] for v in p["epoch_losses"]], rel=1e-6)
    assert [e.value for e in acc.Scalars("eval/acc")] == pytest.approx(m["acc_per_phase"], rel=1e-6)
    assert acc.Scalars("summary/avg_inc_acc")[0].value == pytest.approx(m["avg_inc_acc"], rel=1e-6)
    assert "accuracy_matrix" in str(tags.get("tensors", [])) + str(tags.get("images", []))


def test_tensorboard_after_a_kill_and_resume_holds_each_epoch_once(tiny, monkeypatch):
    pytest.importorskip("tensorboard")
    from cil_train import loop

    argv, out = tiny("--method", "finetune", "--log", "tensorboard")
    real, calls = loop.save_checkpoint, {"n": 0}

    def stop_before_the_third_checkpoint(path, ckpt):  # the epoch's events are written, its checkpoint is not
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(path, ckpt)

    monkeypatch.setattr(loop, "save_checkpoint", stop_before_the_third_checkpoint)
    assert main(argv) == 130
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert main(["--resume", str(out), "--progress", "none"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    loss = _scalars(out / "tensorboard").Scalars("train/loss")
    epochs = sum(len(p["epoch_losses"]) for p in m["phases"])
    assert [e.step for e in loss] == list(range(1, epochs + 1))


def test_tensorboard_missing_is_a_clear_error_before_training(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    argv, out = tiny("--log", "tensorboard")
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--log tensorboard" in err and "pip install 'cil-train[tensorboard]'" in err
    assert not out.exists()
