"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; MIT licence) from the Debian package ``dataset-fashion-mnist``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..dataset import ImageDataset
from ..errors import DataError
from .idx import read_idx

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "DEFAULT_FASHION_MNIST_ROOT", "load_fashion_mnist"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Statistics of the full 60,000-image training set on the 0..1 scale.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the Debian package with "
        f"`apt-get install -y dataset-fashion-mnist` (files go to {DEFAULT_FASHION_MNIST_ROOT}), or point "
        f"--data-root / the CIL_FASHION_MNIST_ROOT environment variable at a folder holding the four IDX files."
    )


def fashion_mnist_arrays(root: str | Path | None = None) -> dict[str, "object"]:
    """The four raw numpy arrays (uint8 images ``[N, 28, 28]``, uint8 labels) keyed as in ``_FILES``."""
    root = Path(root or os.environ.get("CIL_FASHION_MNIST_ROOT") or DEFAULT_FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {root} does not exist. Install it with `apt-get install -y dataset-fashion-mnist` "
            f"or pass the folder that holds the IDX files (--data-root, or CIL_FASHION_MNIST_ROOT)."
        )
    return {key: read_idx(_find(root, stem)) for key, stem in _FILES.items()}


def load_fashion_mnist(root: str | Path | None = None) -> ImageDataset:
    """Load the full Fashion-MNIST (60,000 train / 10,000 test, 10 classes, 1×28×28 uint8).

    ``root`` defaults to ``$CIL_FASHION_MNIST_ROOT`` or ``/usr/share/datasets/fashion-mnist``.
    """
    a = fashion_mnist_arrays(root)
    for split in ("train", "test"):
        if a[f"{split}_images"].ndim != 3 or a[f"{split}_images"].shape[1:] != (28, 28):
            raise DataError(f"Fashion-MNIST {split} images have shape {a[f'{split}_images'].shape}, expected [N, 28, 28]")
    return ImageDataset(
        name="fashion-mnist",
        train_images=torch.from_numpy(a["train_images"].copy()).unsqueeze(1),
        train_labels=torch.from_numpy(a["train_labels"].astype("int64")),
        test_images=torch.from_numpy(a["test_images"].copy()).unsqueeze(1),
        test_labels=torch.from_numpy(a["test_labels"].astype("int64")),
        class_names=list(FASHION_MNIST_CLASSES),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )
