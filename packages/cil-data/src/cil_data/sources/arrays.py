"""In-memory arrays and ``.npz`` files as an :class:`~cil_data.ImageDataset`.

Image layouts accepted: ``[N, H, W]`` (grey), ``[N, C, H, W]`` with ``C ∈ {1, 3}``, or
``[N, H, W, C]`` with ``C ∈ {1, 3}`` (channels last, as numpy image libraries produce), all uint8.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..dataset import ImageDataset
from ..errors import DataError
from ..stats import channel_stats

__all__ = ["NPZ_KEYS", "dataset_from_arrays", "load_npz", "to_nchw"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def to_nchw(images: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` from any accepted layout (see the module docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what}: images must be a numpy array or tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise DataError(f"{what}: images must be uint8 (0..255), got dtype {x.dtype}; convert with (x * 255).round().astype(uint8)")
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return x.permute(0, 3, 1, 2).contiguous()
    raise DataError(f"{what}: images must be [N, H, W], [N, C, H, W] or [N, H, W, C] with C = 1 or 3, got {tuple(x.shape)}")


def _labels(y: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise DataError(f"{what}: labels must be 1-D [N], got shape {tuple(t.shape)}")
    return t.to(torch.int64)


def dataset_from_arrays(
    name: str,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: str = "crop,flip",
) -> ImageDataset:
    """An :class:`ImageDataset` from uint8 image arrays and integer labels.

    ``class_names`` defaults to ``"0", "1", …`` up to the largest label; ``mean``/``std`` default to the
    exact per-channel statistics of the training images (:func:`~cil_data.channel_stats`).
    """
    xtr, xte = to_nchw(x_train, f"{name} train"), to_nchw(x_test, f"{name} test")
    ytr, yte = _labels(y_train, f"{name} train"), _labels(y_test, f"{name} test")
    if class_names is None:
        top = max(int(ytr.max()) if ytr.numel() else -1, int(yte.max()) if yte.numel() else -1)
        class_names = [str(i) for i in range(top + 1)]
    if mean is None or std is None:
        if xtr.shape[0] == 0:
            raise DataError(f"{name}: the training split is empty")
        stat_mean, stat_std = channel_stats(xtr)
        mean = stat_mean if mean is None else mean
        std = stat_std if std is None else std
    return ImageDataset(
        name=name,
        train_images=xtr,
        train_labels=ytr,
        test_images=xte,
        test_labels=yte,
        class_names=[str(c) for c in class_names],
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        augment=augment,
    )


def load_npz(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageDataset:
    """Load an ``.npz`` with keys ``x_train, y_train, x_test, y_test`` (uint8 images, integer labels) and
    optionally ``classes`` (one name per class) and ``augment`` (a string of :data:`~cil_data.AUGMENT_POLICIES`;
    ``"crop"`` for characters, default ``"crop,flip"``), e.g. ``glyphs100.npz``. Pickled objects are refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; pass the path of a .npz holding {', '.join(NPZ_KEYS)}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz file (an .npz is a zip archive; this file is not one): "
                        f"write it with numpy.savez holding {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data.files]
            if missing:
                raise DataError(f"{path} lacks the array(s) {missing}; it holds {data.files}, needs {', '.join(NPZ_KEYS)} (+ optional classes)")
            arrays = {k: data[k] for k in NPZ_KEYS}
            classes = [str(c) for c in data["classes"].tolist()] if "classes" in data.files else None
            augment = str(data["augment"]) if "augment" in data.files else "crop,flip"
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle
        raise DataError(f"{path}: cannot read without pickle ({exc}); store plain numeric/str arrays") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    return dataset_from_arrays(
        name or path.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], classes,
        mean=mean, std=std, augment=augment,
    )
