"""Softmax over task slices ("segments") of the class axis in a constant number of kernel launches.

Class-incremental methods often need one softmax per task: task ``s`` owns the contiguous class
slice ``S_s = [b_s, b_{s+1})`` given by the *boundaries* ``b = [0, b_1, ..., b_S]``. A Python loop
over slices costs ``O(S)`` launches forward and backward. Here a :class:`SegmentPlan` describes
the layout once (cached per boundaries), and every operation runs in a number of launches that
does not grow with the number of tasks:

* **runs** (the usual layouts: equal task sizes, or a large base task followed by equal tasks):
  consecutive slices of equal length ``L`` form a run that is viewed as ``[B, n, L]`` without a
  copy, and one ``log_softmax`` over the last axis handles all ``n`` slices of the run (on CPU, for
  ``L <`` :data:`SHORT_SLICE`, over the middle axis of the transposed view ``[B, L, n]``, which PyTorch's
  CPU kernels handle many times faster). A layout has at most :data:`MAX_RUNS` runs on this path.
* **padded** (any other layout): the columns are gathered into ``[B, S, L_max]`` with ``-inf``
  padding (one ``index_select``), one ``log_softmax`` runs over the last axis, and a second
  ``index_select`` brings the columns back. Its cost is ``S·L_max/C`` times a dense softmax.

The backward of a per-segment log-softmax ``y = x - logsumexp_seg(x)`` is
``∂x = g - softmax_seg(x) · segsum(g)``, with the segment sum broadcast back to its columns.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _checks
from .errors import LossArgumentError, LossTypeError

__all__ = ["MAX_RUNS", "SHORT_SLICE", "SegmentPlan", "parse_boundaries", "segment_plan", "segmented_log_softmax"]

#: A layout with more runs of equal-length slices than this uses the padded path.
MAX_RUNS = 4

Boundaries = Sequence[int] | torch.Tensor


def parse_boundaries(value: object, name: str = "boundaries") -> tuple[int, ...]:
    """Validate task-slice boundaries and return them as a tuple of ints.

    Accepted: a sequence of ints or a 1-D integer tensor, starting at 0 and strictly increasing
    (every slice holds at least one class). ``[0]`` alone means "no task".
    """
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise LossTypeError(f"{name} must be a 1-D integer tensor or a sequence of ints, got {value.dtype} "
                                f"tensor of shape {tuple(value.shape)}")
        items = tuple(int(v) for v in value.tolist())
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        collected = []
        for v in value:
            try:
                if isinstance(v, bool):
                    raise TypeError
                collected.append(operator.index(v))  # ints, numpy ints, 0-d integer tensors
            except TypeError:
                raise LossTypeError(f"{name} must hold ints, got {v!r} of type {type(v).__name__}") from None
        items = tuple(collected)
    else:
        raise LossTypeError(f"{name} must be a sequence of ints or a 1-D integer tensor, got {type(value).__name__}")
    if len(items) == 0 or items[0] != 0:
        raise LossArgumentError(f"{name} must start at 0 (e.g. [0, 2, 4] for two tasks of 2 classes), got {list(items)}")
    for a, b in zip(items, items[1:]):
        if b <= a:
            raise LossArgumentError(
                f"{name} must be strictly increasing (every task slice non-empty), got {list(items)}"
            )
    return items


@dataclass(frozen=True)
class SegmentPlan:
    """How to compute per-slice softmaxes for one boundaries layout (see the module docstring)."""

    boundaries: tuple[int, ...]
    #: ``(start, count, length)``: ``count`` consecutive slices of ``length`` classes from ``start``.
    runs: tuple[tuple[int, int, int], ...]

    @property
    def num_columns(self) -> int:
        return self.boundaries[-1]

    @property
    def num_segments(self) -> int:
        return len(self.boundaries) - 1

    @property
    def max_length(self) -> int:
        return max(b - a for a, b in zip(self.boundaries, self.boundaries[1:]))

    @property
    def padded(self) -> bool:
        """True when this layout uses the padded path (more than :data:`MAX_RUNS` runs)."""
        return len(self.runs) > MAX_RUNS

    # ---- device-side index tensors of the padded path (cached per device)
    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _padded_indices(self.boundaries, str(device))

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice ``log_softmax`` of ``x[:, :num_columns]`` (no autograd bookkeeping of its own)."""
        batch = x.shape[0]
        return self._apply(torch.log_softmax, x)

    def _apply(self, op, x: torch.Tensor) -> torch.Tensor:
        """``op(·, dim)`` (log_softmax or softmax) over every slice, in launches independent of #slices."""
        batch = x.shape[0]
        if not self.padded:
            parts = [_run_op(op, x[:, start : start + count * length], batch, count, length)
                     for start, count, length in self.runs]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        gather, scatter_back, _ = self._indices(x.device)
        padded = F.pad(x[:, : self.num_columns], (0, 1), value=float("-inf")).index_select(1, gather)
        out = _run_op(op, padded, batch, self.num_segments, self.max_length)
        return out.index_select(1, scatter_back)

    def softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice ``softmax`` of ``x[:, :num_columns]`` (no autograd bookkeeping of its own)."""
        return self._apply(torch.softmax, x)

    def segment_sum(self, g: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` tensor whose column ``c`` holds the sum of ``g`` over the slice containing ``c``."""
        batch = g.shape[0]
        if not self.padded:
            parts = []
            for start, count, length in self.runs:
                run = g[:, start : start + count * length].reshape(batch, count, length)
                parts.append(run.sum(dim=-1, keepdim=True).expand(batch, count, length).reshape(batch, count * length))
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        gather, _, segment_id = self._indices(g.device)
        padded = F.pad(g[:, : self.num_columns], (0, 1)).index_select(1, gather)
        sums = padded.view(batch, self.num_segments, self.max_length).sum(dim=-1)
        return sums.index_select(1, segment_id)


#: Below this slice length, softmaxes run along the middle axis of a transposed view: the CPU kernels
#: for a last axis shorter than a SIMD register are many times slower than for the other layout.
SHORT_SLICE = 16


def _run_op(op, block: torch.Tensor, batch: int, count: int, length: int) -> torch.Tensor:
    """``op`` over each of ``count`` consecutive slices of ``length`` columns of ``block`` (``[B, count·length]``)."""
    view = block.reshape(batch, count, length)
    if length < SHORT_SLICE and view.device.type == "cpu":
        out = op(view.transpose(1, 2), dim=1).transpose(1, 2)
    else:
        out = op(view, dim=-1)
    return out.reshape(batch, count * length)


def _runs(boundaries: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    runs: list[list[int]] = []
    for a, b in zip(boundaries, boundaries[1:]):
        length = b - a
        if runs and runs[-1][2] == length:
            runs[-1][1] += 1
        else:
            runs.append([a, 1, length])
    return tuple((s, n, L) for s, n, L in runs)


@functools.lru_cache(maxsize=256)
def segment_plan(boundaries: tuple[int, ...]) -> SegmentPlan:
    """The cached :class:`SegmentPlan` of validated ``boundaries`` (see :func:`parse_boundaries`)."""
    if len(boundaries) < 2:
        raise LossArgumentError(f"boundaries must describe at least one task slice, got {list(boundaries)}")
    return SegmentPlan(boundaries=boundaries, runs=_runs(boundaries))


@functools.lru_cache(maxsize=256)
def _padded_indices(boundaries: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors of the padded path: column gather into ``[S, L_max]`` (pad → column ``C``),
    the way back, and the segment id of every column."""
    starts = torch.tensor(boundaries[:-1], dtype=torch.long)
    lengths = torch.tensor(boundaries[1:], dtype=torch.long) - starts
    num_columns, num_segments, width = boundaries[-1], len(starts), int(lengths.max())
    offset = torch.arange(width, dtype=torch.long)
    gather = torch.where(offset[None, :] < lengths[:, None], starts[:, None] + offset[None, :], num_columns)
    segment_id = torch.repeat_interleave(torch.arange(num_segments, dtype=torch.long), lengths)
    within = torch.arange(num_columns, dtype=torch.long) - starts[segment_id]
    scatter_back = segment_id * width + within
    dev = torch.device(device)
    return gather.reshape(-1).to(dev), scatter_back.to(dev), segment_id.to(dev)


def plan_for(boundaries: Boundaries, name: str = "boundaries") -> SegmentPlan | None:
    """Validated plan for ``boundaries``; ``None`` when they describe no task (``[0]``)."""
    items = parse_boundaries(boundaries, name)
    return None if len(items) == 1 else segment_plan(items)


class SegmentedLogSoftmaxFunction(torch.autograd.Function):
    """``y[:, S_s] = log_softmax(x[:, S_s])`` for every slice ``S_s`` in one pass.

    Forward and backward each take a constant number of launches for any number of slices.
    Computed in float32 for half/bfloat16 inputs (float64 stays float64).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:  # type: ignore[override]
        out = plan.log_softmax(_checks.upcast(x))
        ctx.plan = plan
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        grad_out = grad_out.to(out.dtype)
        grad = grad_out - out.exp() * ctx.plan.segment_sum(grad_out)
        return grad, None


def segmented_log_softmax(logits: torch.Tensor, boundaries: Boundaries) -> torch.Tensor:
    """Log-softmax taken separately over every task slice of the class axis.

    ``out[i, c] = z_ic - log Σ_{k ∈ S_s} exp(z_ik)`` for ``c ∈ S_s = [b_s, b_{s+1})``.

    Args:
        logits: ``[B, C]`` with ``C == boundaries[-1]``.
        boundaries: ``[0, b_1, ..., C]`` (sequence of ints or 1-D integer tensor), strictly increasing.

    Returns:
        ``[B, C]`` log-probabilities (float32 for half/bfloat16 logits, else the logits' dtype).
        A custom autograd Function: forward and backward run in a number of kernel launches that
        does not depend on the number of slices.

    Example:
        >>> import torch, cil_losses as L
        >>> L.segmented_log_softmax(torch.zeros(1, 5), boundaries=[0, 2, 5]).exp()   # tasks {0, 1}, {2, 3, 4}
        tensor([[0.5000, 0.5000, 0.3333, 0.3333, 0.3333]])
    """
    logits = _checks.logits_2d("logits", logits)
    plan = plan_for(boundaries)
    if plan is None or plan.num_columns != logits.shape[1]:
        raise LossArgumentError(
            f"boundaries must end at the number of logit columns ({logits.shape[1]}), got {list(parse_boundaries(boundaries))}"
        )
    return SegmentedLogSoftmaxFunction.apply(logits, plan)
