"""Every registered method runs to the end on a stream whose tail classes keep 1 or 2 training images.

The method list comes from :func:`cil_train.methods.methods`, so a method added later is covered
without touching this file. Where a method needs more than the data gives (a held-out validation share),
the loop adapts in one place and says so in the log.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cil_train.cli import main
from cil_train.methods import Method, methods

# training images per class: two head classes, then a tail down to one image
TRAIN_COUNTS = (24, 16, 6, 3, 2, 1)


@pytest.fixture(scope="module")
def tail_npz(tmp_path_factory) -> Path:
    g = np.random.default_rng(5)
    x_train = np.concatenate([g.integers(0, 256, (n, 16, 16), dtype=np.uint8) + np.uint8(c * 20)
                              for c, n in enumerate(TRAIN_COUNTS)])
    y_train = np.repeat(np.arange(len(TRAIN_COUNTS)), TRAIN_COUNTS)
    x_test = g.integers(0, 256, (3 * len(TRAIN_COUNTS), 16, 16), dtype=np.uint8)
    y_test = np.repeat(np.arange(len(TRAIN_COUNTS)), 3)
    path = tmp_path_factory.mktemp("tail") / "tail.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             classes=np.array([f"c{i}" for i in range(len(TRAIN_COUNTS))]))
    return path


def _argv(npz: Path, out: Path, name: str) -> list[str]:
    argv = ["--method", name, "--data", "npz", "--data-root", str(npz), "--imbalance", "1", "--order", "ordered",
            "--phases", "3", "--backbone", "resnet8", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "64",
            "--threads", "1", "--progress", "none", "--no-plots", "--seed", "3", "--out", str(out)]
    if methods()[name].memory != "none":
        argv += ["--memory-per-class", "20"]
    return argv


@pytest.mark.parametrize("name", list(methods()))
def test_every_method_runs_to_the_end_with_one_or_two_images_in_tail_classes(name, tail_npz, tmp_path, capsys):
    out = tmp_path / name
    code = main(_argv(tail_npz, out, name))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and len(m["acc_per_phase"]) == 3
    assert "Traceback" not in captured.err
    if methods()[name].held_out_per_class is not Method.held_out_per_class:
        # phase 3's classes have 2 and 1 images: fewer held out, said in the log
        assert "held-out validation: " in captured.out and "held out 0 for class 5" in captured.out, captured.out
