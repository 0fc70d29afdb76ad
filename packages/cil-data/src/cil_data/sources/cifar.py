"""CIFAR-10 / CIFAR-100 (Krizhevsky 2009) from a local folder in the original python-pickle layout.

Layouts (the folders inside ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    ROOT/cifar-100-python/{train, test, meta}
    ROOT/cifar-10-batches-py/{data_batch_1, …, data_batch_5, test_batch, batches.meta}

``root`` may be ``ROOT`` or the inner folder itself. The structure is validated (keys, shapes, label
ranges); the original archive checksums are not required. Pickles can run code when loaded, so the
files are read with an unpickler that only admits what the CIFAR files contain (numpy arrays, lists,
dicts, strings) and refuses anything else.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dataset import ImageDataset
from ..errors import DataError

__all__ = ["CIFAR_STATS", "load_cifar"]

# Per-channel statistics of the training sets on the 0..1 scale (the values used by PyCIL / DGR).
CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_LAYOUT = {
    100: {
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
    10: {
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the numpy globals that a CIFAR pickle refers to."""

    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: the pickle refers to {module}.{name}, which no CIFAR file contains; refusing to load "
                "it (pickles can run code). Use the original files from the CIFAR website."
            ) from None


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or not a pickle
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _resolve(root: Path, num_classes: int) -> Path:
    spec = _LAYOUT[num_classes]
    for folder in (root / spec["folder"], root):
        if all((folder / f).is_file() for f in [*spec["train"], *spec["test"], spec["meta"]]):
            return folder
    expected = ", ".join([*spec["train"], *spec["test"], spec["meta"]])
    raise DataError(
        f"CIFAR-{num_classes} not found under {root}: expected the folder {root / spec['folder']} holding {expected}. "
        f"Download {spec['url']} and extract it into {root} (tar xzf {spec['url'].rsplit('/', 1)[1]} -C {root})."
    )


def _split(folder: Path, files: list[str], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        path = folder / name
        d = _read_pickle(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"{path}: missing key 'data' or '{label_key}' (keys: {sorted(d)}); is this CIFAR-{num_classes}?")
        x = d["data"]
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            shape = getattr(x, "shape", None)
            raise DataError(f"{path}: 'data' must be a uint8 array [N, 3072] (32×32 RGB planes), got {type(x).__name__} {shape}")
        y = np.asarray(d[label_key])
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: '{label_key}' must hold {x.shape[0]} integer labels, got shape {y.shape} dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{path}: label {int(y.max() if y.max() >= num_classes else y.min())} is outside 0..{num_classes - 1}")
        images.append(x.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(root: str | os.PathLike[str], num_classes: int = 100) -> ImageDataset:
    """Load CIFAR-100 (``num_classes=100``) or CIFAR-10 (``10``) from the python-pickle files under ``root``.

    Returns 50,000 training and 10,000 test images (uint8 ``[N, 3, 32, 32]``) with the original labels.
    """
    if num_classes not in _LAYOUT:
        raise DataError(f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes!r}")
    spec = _LAYOUT[num_classes]
    folder = _resolve(Path(root), num_classes)
    meta = _read_pickle(folder / spec["meta"])
    names = meta.get(spec["names"])
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{folder / spec['meta']}: '{spec['names']}' must list {num_classes} class names")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    xtr, ytr = _split(folder, spec["train"], spec["labels"], num_classes)
    xte, yte = _split(folder, spec["test"], spec["labels"], num_classes)
    mean, std = CIFAR_STATS[num_classes]
    return ImageDataset(f"cifar{num_classes}", xtr, ytr, xte, yte, class_names, mean=mean, std=std)
