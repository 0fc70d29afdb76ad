"""--data imagefolder: small trees are decoded into memory, large ones decoded phase by phase."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cil_data

from cil_train import data as train_data
from cil_train.cli import main

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    g = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((20, 20, 3), np.uint8)
                base[..., c % 3] = 60 + 50 * c  # a class colour, plus noise
                img = np.clip(base + g.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
                PIL.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("lazy", [False, True], ids=["in-memory", "decoded-per-phase"])
def test_image_folder_run(tree, tmp_path, monkeypatch, lazy):
    if lazy:
        monkeypatch.setattr(train_data, "IN_MEMORY_LIMIT", 0)
    out = tmp_path / "run"
    argv = ["--data", "imagefolder", "--data-root", str(tree), "--image-size", "16", "--method", "icarl",
            "--phases", "2", "--imbalance", "2", "--memory-per-class", "3", "--backbone", "resnet8", "--epochs", "2",
            "--batch-size", "16", "--progress", "none", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and len(m["acc_per_phase"]) == 2 and sum(map(sum, m["confusion_matrix"])) == 16
    assert m["data"] == "folder0" or m["data"].startswith("folder")
    loaded = train_data.load_dataset(__import__("cil_train").RunConfig(data="imagefolder", data_root=str(tree), image_size=16))
    assert isinstance(loaded, cil_data.LazyImageDataset) is lazy
