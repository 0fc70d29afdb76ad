"""Small argument checks shared by the modules of cil-data (each raises :class:`DataError`)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .errors import DataError

__all__ = ["check_int", "check_labels", "check_permutation", "as_index_tensor"]


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int; refuses bools, floats and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise DataError(f"{name} must be ≥ {minimum}, got {value}")
    return value


def check_labels(labels: object, name: str, num_classes: int | None = None) -> torch.Tensor:
    """A 1-D int64 CPU tensor of labels in ``0..num_classes-1`` (integer numpy arrays/tensors accepted)."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{name} must be a tensor of integer labels, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise DataError(f"{name} must be 1-D [N], got shape {tuple(labels.shape)}")
    labels = labels.to(device="cpu", dtype=torch.int64)
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise DataError(f"{name}: label {lo} is out of range: labels must be ≥ 0")
        if num_classes is not None and hi >= num_classes:
            raise DataError(f"{name}: label {hi} is out of range: labels must lie in 0..{num_classes - 1} ({num_classes} classes)")
    return labels


def check_permutation(values: object, n: int, name: str) -> list[int]:
    """``values`` as a list that holds each of ``0..n-1`` exactly once."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
        raise DataError(f"{name} must be a sequence of {n} distinct class labels, got {values!r}")
    out = [check_int(v, f"{name}[{i}]") for i, v in enumerate(values.tolist() if hasattr(values, "tolist") else values)]
    if len(out) != n:
        raise DataError(f"{name} must list all {n} classes exactly once, got {len(out)} entries")
    seen = np.zeros(n, dtype=bool)
    for i, v in enumerate(out):
        if not 0 <= v < n:
            raise DataError(f"{name}[{i}] = {v} is out of range: classes are 0..{n - 1}")
        if seen[v]:
            raise DataError(f"{name} lists class {v} twice; it must be a permutation of 0..{n - 1}")
        seen[v] = True
    return out


def as_index_tensor(indices: object, size: int, name: str) -> torch.Tensor:
    """A 1-D int64 CPU tensor of distinct indices into an axis of length ``size``."""
    if isinstance(indices, np.ndarray):
        indices = torch.from_numpy(indices)
    if isinstance(indices, (list, tuple, range)):
        indices = torch.as_tensor(list(indices), dtype=torch.int64)
    if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise DataError(f"{name} must be a 1-D tensor of integer indices, got {type(indices).__name__}"
                        + (f" of dtype {indices.dtype}" if isinstance(indices, torch.Tensor) else ""))
    if indices.dim() != 1:
        raise DataError(f"{name} must be 1-D, got shape {tuple(indices.shape)}")
    indices = indices.to(device="cpu", dtype=torch.int64)
    if indices.numel():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= size:
            raise DataError(f"{name}: index {lo if lo < 0 else hi} is out of range 0..{size - 1}")
        if torch.unique(indices).numel() != indices.numel():
            raise DataError(f"{name} holds repeated indices; give each sample at most once")
    return indices
