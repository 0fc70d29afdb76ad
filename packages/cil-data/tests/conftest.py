"""Shared helpers of the cil-data tests (plain functions exposed as fixtures; test files cannot import each other)."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch


def write_fake_cifar(root: Path, num_classes: int, n_train: int, n_test: int, seed: int = 0, protocol: int = 4) -> tuple[dict, dict]:
    """Write the python-pickle layout of CIFAR-10/100 with random images under ``root``; returns the arrays."""
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    ytr = (np.arange(n_train) % num_classes).tolist()
    xte = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yte = (np.arange(n_test) % num_classes).tolist()
    names = [f"class{i}".encode() for i in range(num_classes)]

    def dump(obj: dict, path: Path) -> None:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=protocol)

    if num_classes == 100:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        dump({b"data": xtr, b"fine_labels": ytr, b"coarse_labels": [0] * n_train}, folder / "train")
        dump({b"data": xte, b"fine_labels": yte, b"coarse_labels": [0] * n_test}, folder / "test")
        dump({b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}, folder / "meta")
    else:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            dump({b"data": xtr[part], b"labels": [ytr[j] for j in part]}, folder / f"data_batch_{i}")
        dump({b"data": xte, b"labels": yte}, folder / "test_batch")
        dump({b"label_names": names}, folder / "batches.meta")
    return {"x": xtr, "y": ytr}, {"x": xte, "y": yte}


@pytest.fixture
def fake_cifar():
    return write_fake_cifar


def random_images(n: int, shape=(3, 8, 8), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


@pytest.fixture
def make_images():
    return random_images


@pytest.fixture(scope="session")
def reference_herding():
    """iCaRL herding written plainly (tests/references.py, shared with tools/bench_data.py)."""
    spec = importlib.util.spec_from_file_location("cil_data_test_references", Path(__file__).with_name("references.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_herding
