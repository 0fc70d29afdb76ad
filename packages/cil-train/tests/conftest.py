"""Tiny real data for end-to-end runs: 6 Fashion-MNIST classes, 40 train / 10 test images each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cil_data


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    ds = cil_data.load_embedded()
    g = np.random.default_rng(0)
    keep_tr, keep_te = [], []
    for c in range(6):
        keep_tr += list(g.choice(np.flatnonzero(ds.train_labels.numpy() == c), 40, replace=False))
        keep_te += list(g.choice(np.flatnonzero(ds.test_labels.numpy() == c), 10, replace=False))
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=ds.train_images[keep_tr, 0].numpy(), y_train=ds.train_labels[keep_tr].numpy(),
        x_test=ds.test_images[keep_te, 0].numpy(), y_test=ds.test_labels[keep_te].numpy(),
        classes=np.array(ds.class_names[:6]),
    )
    return path


def tiny_args(npz: Path, out: Path, *extra: str) -> list[str]:
    """Options of a run that takes a few seconds on a CPU: 3 phases of 2 classes, ResNet-8, 2 epochs."""
    return [
        "--data", "npz", "--data-root", str(npz), "--backbone", "resnet8", "--epochs", "2", "--phases", "3",
        "--imbalance", "4", "--memory-per-class", "5", "--batch-size", "32", "--eval-batch-size", "128",
        "--progress", "none", "--no-plots", "--seed", "7", "--out", str(out), *extra,
    ]


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def without_timings(obj):
    """metrics.json minus wall-clock fields (the only ones a resumed run may change)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in ("wall_seconds", "phase_seconds", "seconds", "train_seconds")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


@pytest.fixture
def strip_timings():
    return without_timings


@pytest.fixture
def tiny_argv(tiny_npz):
    """``tiny_argv(out, *extra)``: the argument list of a tiny run into ``out``."""
    return lambda out, *extra: tiny_args(tiny_npz, out, *extra)


@pytest.fixture
def tiny(tiny_npz, tmp_path):
    def make(*extra: str, out: str = "run") -> tuple[list[str], Path]:
        folder = tmp_path / out
        return tiny_args(tiny_npz, folder, *extra), folder

    return make


@pytest.fixture(autouse=True)
def _quiet_torch_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
