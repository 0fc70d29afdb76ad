"""The embedded default data set: a class-stratified Fashion-MNIST subset shipped inside cil-data.

600 training and 100 test images per class (7,000 images, 1×28×28 uint8), chosen with a seeded
per-class random draw from the Debian ``dataset-fashion-mnist`` files by
``tools/build_embedded_data.py``. Fashion-MNIST is © 2017 Zalando SE, MIT licence
(``cil_data/embedded/LICENSE-fashion-mnist.txt``). Loading needs no network and no apt.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import torch

from ..dataset import ImageDataset
from ..errors import DataError
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["EMBEDDED_FILE", "load_embedded"]

EMBEDDED_FILE = "fashion_mnist_subset.npz"


def load_embedded() -> ImageDataset:
    """Load the embedded Fashion-MNIST subset (10 classes, 6,000 train / 1,000 test images)."""
    ref = resources.files("cil_data") / "embedded" / EMBEDDED_FILE
    try:
        with ref.open("rb") as fh:
            data = dict(np.load(fh, allow_pickle=False))
    except FileNotFoundError as exc:
        raise DataError(
            f"the embedded data file cil_data/embedded/{EMBEDDED_FILE} is missing from this installation; "
            "reinstall cil-data or rebuild it with `hatch run python tools/build_embedded_data.py`"
        ) from exc
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        digest.update(np.ascontiguousarray(data[key]).tobytes())
    if digest.hexdigest() != str(data["sha256"]):
        raise DataError(f"the embedded data file {EMBEDDED_FILE} is corrupt (checksum mismatch); reinstall cil-data")
    return ImageDataset(
        name="embedded",
        train_images=torch.from_numpy(data["x_train"]).unsqueeze(1),
        train_labels=torch.from_numpy(data["y_train"].astype(np.int64)),
        test_images=torch.from_numpy(data["x_test"]).unsqueeze(1),
        test_labels=torch.from_numpy(data["y_test"].astype(np.int64)),
        class_names=list(FASHION_MNIST_CLASSES),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )
