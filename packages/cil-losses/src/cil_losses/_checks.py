"""Argument checks and dtype helpers shared by the modules of cil-losses (internal).

The checks look only at Python-side metadata (types, shapes, dtypes) unless stated otherwise, so
they cost no device synchronisation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch

from .errors import LossArgumentError, LossTypeError

REDUCTIONS = ("mean", "sum", "none")

#: ``log₂ e`` and ``ln 2``: the losses that run ``exp2`` on base-2 logits (DAKD, the fused cross-entropy)
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


def logits_2d(name: str, value: object, min_columns: int = 1) -> torch.Tensor:
    """Return ``value`` if it is a floating-point tensor of shape ``[B, C]`` with ``B >= 1``, ``C >= min_columns``."""
    # fast path first (one shape read): these checks run on every loss call
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        shape = value.shape
        if len(shape) == 2 and shape[0] >= 1 and shape[1] >= min_columns:
            return value
    if not isinstance(value, torch.Tensor):
        raise LossTypeError(f"{name} must be a torch.Tensor of shape [B, C], got {type(value).__name__}")
    if not value.is_floating_point():
        raise LossTypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if value.dim() != 2:
        raise LossArgumentError(f"{name} must have shape [B, C] (2 dimensions), got shape {tuple(value.shape)}")
    if value.shape[0] < 1:
        raise LossArgumentError(f"{name} must hold at least one sample, got shape {tuple(value.shape)}")
    raise LossArgumentError(f"{name} must have at least {min_columns} class column(s), got shape {tuple(value.shape)}")


_INTEGER_DTYPES = frozenset(
    dt for dt in (getattr(torch, n, None) for n in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32",
                                                      "uint64"))
    if dt is not None
)


def targets_1d(name: str, value: object, batch: int) -> torch.Tensor:
    """Return ``value`` if it is an integer tensor of shape ``[batch]``."""
    if isinstance(value, torch.Tensor) and value.dtype in _INTEGER_DTYPES and value.shape == (batch,):
        return value
    if not isinstance(value, torch.Tensor):
        raise LossTypeError(f"{name} must be an integer torch.Tensor of shape [{batch}], got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise LossTypeError(f"{name} must have an integer dtype (class indices), got {value.dtype}")
    if value.dim() != 1 or value.shape[0] != batch:
        raise LossArgumentError(f"{name} must have shape [{batch}] (one class index per sample), got {tuple(value.shape)}")
    return value  # an integer dtype this module does not list (e.g. a future one)


def mask_1d(name: str, value: object, batch: int, device: torch.device) -> torch.Tensor:
    """Return ``value`` as a bool tensor of shape ``[batch]`` on ``device`` (0/1 integer tensors are accepted)."""
    if not isinstance(value, torch.Tensor):
        raise LossTypeError(f"{name} must be a bool torch.Tensor of shape [{batch}], got {type(value).__name__}")
    if value.dim() != 1 or value.shape[0] != batch:
        raise LossArgumentError(f"{name} must have shape [{batch}] (one flag per sample), got {tuple(value.shape)}")
    if value.dtype != torch.bool:
        if value.is_floating_point() or value.is_complex():
            raise LossTypeError(f"{name} must be a bool (or 0/1 integer) tensor, got dtype {value.dtype}")
        value = value != 0
    return value.to(device=device, non_blocking=True)


def same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise LossArgumentError(
            f"{name_a} and {name_b} must have the same batch size, got {a.shape[0]} and {b.shape[0]}"
        )


def temperature(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a real number > 0, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise LossArgumentError(f"{name} must be a finite real number > 0, got {value}")
    return value


def non_negative_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a real number >= 0, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise LossArgumentError(f"{name} must be a finite real number >= 0, got {value}")
    return value


def class_count(name: str, value: object, upper: int) -> int:
    """Return ``value`` if it is an int in ``[0, upper]`` (a number of classes)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LossTypeError(f"{name} must be an int in [0, {upper}], got {value!r} of type {type(value).__name__}")
    if not 0 <= value <= upper:
        raise LossArgumentError(f"{name} must be an int in [0, {upper}] (number of classes), got {value}")
    return value


def reduction(value: object) -> str:
    if value not in REDUCTIONS:
        raise LossArgumentError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {value!r}")
    return value  # type: ignore[return-value]


def reduce(per_sample: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        return per_sample.mean()
    if how == "sum":
        return per_sample.sum()
    return per_sample


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its compute dtype (a no-op for float32 and float64)."""
    dt = compute_dtype(t)
    return t if t.dtype == dt else t.to(dt)


def as_float_vector(name: str, value: object, length: int, like: torch.Tensor) -> torch.Tensor:
    """A 1-D sequence or tensor of ``length`` numbers as a tensor on ``like``'s device in its compute dtype."""
    dtype = compute_dtype(like)
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise LossTypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        out = value.to(device=like.device, dtype=dtype)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        try:
            out = torch.tensor([float(v) for v in value], dtype=dtype, device=like.device)
        except (TypeError, ValueError) as err:
            raise LossTypeError(f"{name} must be a sequence of real numbers, got {value!r}") from err
    else:
        raise LossTypeError(f"{name} must be a 1-D tensor or a sequence of numbers, got {type(value).__name__}")
    if out.dim() != 1 or out.shape[0] != length:
        raise LossArgumentError(
            f"{name} must have one entry per class ({length}), got shape {tuple(out.shape)}"
        )
    return out


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(1)`` for real ``[B, C]`` tensors (a fresh ``[B]`` tensor).

    ``torch.linalg.vecdot``: on CPU about 5× faster than a batched ``bmm`` of ``[B, 1, C]`` by
    ``[B, C, 1]`` (0.04 vs 0.21 ms at 256 × 900, one thread), whose kernel is slow for that shape.
    """
    return torch.linalg.vecdot(a, b, dim=1)


_NO_CONTEXT = contextlib.nullcontext()


def autocast_off(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that disables autocast for ``t``'s device type (losses compute in float32/64 themselves).

    When autocast is not on for that device type (the usual case) it is a shared no-op context: entering
    a ``torch.autocast`` context costs about 10 µs of Python per call.
    """
    device_type = t.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return _NO_CONTEXT
