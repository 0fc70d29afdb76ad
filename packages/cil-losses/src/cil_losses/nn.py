"""Thin ``torch.nn.Module`` wrappers of the functional losses, for state that lives across steps.

Each wrapper holds the per-phase context (class counts, task boundaries, lost counts...) and calls
the function of the same name in :mod:`cil_losses`; see those for the formulas.
:class:`GradientReweighter` (GR / DGR) is the one with real state (the accumulator ``Φ``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks
from .balanced import (
    DEFAULT_MIN_LAMBDA,
    _shifted_cross_entropy,
    balanced_softmax_offsets,
    logit_adjusted_cross_entropy,
)
from .dgr import dakd_loss
from .errors import LossArgumentError
from .distillation import kd_loss, output_coordination_kd, segmented_kd, task_wise_kd
from .gradient_reweighting import GradientReweighter
from .jioc import input_coordination_ce, jioc_loss, new_head_suppression
from .segments import Boundaries, parse_boundaries
from .ssil import separated_softmax_cross_entropy

__all__ = [
    "BalancedSoftmaxCE",
    "DAKDLoss",
    "GradientReweighter",
    "InputCoordinationCE",
    "JIOCLoss",
    "KDLoss",
    "LogitAdjustedCE",
    "NewHeadSuppression",
    "OutputCoordinationKD",
    "SegmentedKD",
    "SeparatedSoftmaxCE",
    "TaskWiseKD",
]


class KDLoss(torch.nn.Module):
    """:func:`cil_losses.kd_loss` with fixed ``T``, ``t_squared``, ``reduction``."""

    def __init__(self, T: float = 2.0, *, t_squared: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.T = _checks.temperature("T", T)
        self.t_squared = bool(t_squared)
        self.reduction = _checks.reduction(reduction)

    @_checks.renamed_keywords(student_logits="logits")
    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(logits, teacher_logits, self.T, t_squared=self.t_squared, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"T={self.T}, t_squared={self.t_squared}, reduction={self.reduction!r}"


class _CastOffsets:
    """Mixin: the float64 ``offsets`` buffer converted to the logits' compute dtype and device, cached until
    the buffer changes (a new tensor, an in-place change, or another dtype/device asked for)."""

    _cast: tuple | None = None

    def _offsets_like(self, logits: torch.Tensor) -> torch.Tensor:
        offsets = self._buffers["offsets"]        # the buffer without nn.Module.__getattr__ (every step)
        dtype = _checks.compute_dtype(logits)
        if offsets.dtype is dtype and offsets.device == logits.device:
            return offsets
        cast = self._cast
        if (cast is not None and cast[0] is offsets and cast[1] == offsets._version and cast[2] is dtype
                and cast[3] == logits.device):
            return cast[4]
        converted = offsets.to(device=logits.device, dtype=dtype)
        self._cast = (offsets, offsets._version, dtype, logits.device, converted)
        return converted


class LogitAdjustedCE(_CastOffsets, torch.nn.Module):
    """:func:`cil_losses.logit_adjusted_cross_entropy` with the offsets held as a buffer (moves with
    ``.to(device)``; a float64 copy, converted to the logits' dtype at each call)."""

    offsets: torch.Tensor

    def __init__(self, offsets: torch.Tensor | Sequence[float], reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _checks.reduction(reduction)
        offsets = torch.as_tensor(offsets).detach()
        if not offsets.is_floating_point():
            offsets = offsets.double()
        self.register_buffer("offsets", offsets.to(torch.float64, copy=True))

    @_checks.renamed_keywords(targets="target")
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _checks.logits_2d("logits", logits)
        return logit_adjusted_cross_entropy(logits, target, self._offsets_like(logits), self.reduction)


class BalancedSoftmaxCE(_CastOffsets, torch.nn.Module):
    """:func:`cil_losses.balanced_softmax_cross_entropy` (BalancedS-CE / old-class weight α / Relaxed ε) with
    the offsets ``log λ`` computed once per phase, in float64.

    Call :meth:`set_counts` when the counts change (each phase); the forward then costs one addition
    more than plain cross-entropy. The offsets are converted to the logits' dtype (and device) at the first
    call with that dtype and kept.
    """

    offsets: torch.Tensor

    def __init__(
        self,
        class_counts: Sequence[float] | torch.Tensor,
        num_old: int = 0,
        alpha: float = 1.0,
        eps: float | None = None,
        reduction: str = "mean",
        *,
        min_lambda: float = DEFAULT_MIN_LAMBDA,
    ) -> None:
        super().__init__()
        self.reduction = _checks.reduction(reduction)
        self.min_lambda = min_lambda
        self.register_buffer("offsets", torch.zeros(0, dtype=torch.float64))
        self.set_counts(class_counts, num_old, alpha, eps)

    def set_counts(
        self, class_counts: Sequence[float] | torch.Tensor, num_old: int = 0, alpha: float = 1.0,
        eps: float | None = None,
    ) -> None:
        """Recompute ``log λ`` (float64) for new counts / old-class split / α / ε."""
        offsets = balanced_softmax_offsets(class_counts, num_old, alpha, eps, min_lambda=self.min_lambda,
                                           dtype=torch.float64)
        self.num_old, self.alpha, self.eps = num_old, alpha, eps
        # tensor counts keep their device; sequences follow the module's device
        self.offsets = offsets if isinstance(class_counts, torch.Tensor) else offsets.to(self.offsets.device)
        self._cast = None

    @_checks.renamed_keywords(targets="target")
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _checks.logits_2d("logits", logits)
        target = _checks.targets_1d("target", target, logits.shape[0], logits.device)
        offsets = self._offsets_like(logits)
        if offsets.shape[0] != logits.shape[1]:
            raise LossArgumentError(f"logits have {logits.shape[1]} columns but the counts given to "
                                    f"BalancedSoftmaxCE have {offsets.shape[0]} entries (call set_counts)")
        return _shifted_cross_entropy(logits, target, offsets, self.reduction)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        saved = state_dict.get(prefix + "offsets")
        if isinstance(saved, torch.Tensor) and saved.shape != self.offsets.shape:
            self.offsets = torch.zeros(saved.shape, dtype=self.offsets.dtype, device=self.offsets.device)
        self._cast = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_classes={self.offsets.numel()}, num_old={self.num_old}, alpha={self.alpha}, eps={self.eps}"


class SeparatedSoftmaxCE(torch.nn.Module):
    """:func:`cil_losses.separated_softmax_cross_entropy` with a fixed ``num_old``."""

    def __init__(self, num_old: int, reduction: str = "mean") -> None:
        super().__init__()
        self.num_old = num_old
        self.reduction = _checks.reduction(reduction)

    @_checks.renamed_keywords(targets="target", is_replay="is_memory")
    def forward(self, logits: torch.Tensor, target: torch.Tensor, is_memory: torch.Tensor | None) -> torch.Tensor:
        return separated_softmax_cross_entropy(logits, target, self.num_old, is_memory, self.reduction)


class _WithBoundaries(torch.nn.Module):
    def __init__(self, boundaries: Boundaries, T: float = 2.0) -> None:
        super().__init__()
        self.boundaries = parse_boundaries(boundaries)
        self.T = _checks.temperature("T", T)

    def extra_repr(self) -> str:
        return f"boundaries={list(self.boundaries)}, T={self.T}"


class TaskWiseKD(_WithBoundaries):
    """:func:`cil_losses.task_wise_kd` (SS-IL) over fixed old-task boundaries."""

    def __init__(self, boundaries: Boundaries, T: float = 2.0, *, t_squared: bool = True,
                 reduction: str = "mean") -> None:
        super().__init__(boundaries, T)
        self.t_squared = bool(t_squared)
        self.reduction = _checks.reduction(reduction)

    @_checks.renamed_keywords(student_logits="logits")
    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return task_wise_kd(logits, teacher_logits, self.boundaries, self.T, t_squared=self.t_squared,
                            reduction=self.reduction)


class OutputCoordinationKD(_WithBoundaries):
    """:func:`cil_losses.output_coordination_kd` (JIOC ``L_OC``) over fixed old-task boundaries."""

    def __init__(self, boundaries: Boundaries, T: float = 2.0, *, t_squared: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__(boundaries, T)
        self.t_squared = bool(t_squared)
        self.reduction = _checks.reduction(reduction)

    @_checks.renamed_keywords(student_logits="logits")
    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return output_coordination_kd(logits, teacher_logits, self.boundaries, self.T,
                                      t_squared=self.t_squared, reduction=self.reduction)


class SegmentedKD(_WithBoundaries):
    """:func:`cil_losses.segmented_kd` over fixed task boundaries (KL or soft-target CE per slice)."""

    def __init__(self, boundaries: Boundaries, T: float = 2.0, *, kl: bool = True, t_squared: bool = True,
                 reduction: str = "mean") -> None:
        super().__init__(boundaries, T)
        self.kl, self.t_squared = bool(kl), bool(t_squared)
        self.reduction = _checks.reduction(reduction)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return segmented_kd(logits, teacher_logits, self.boundaries, self.T, kl=self.kl, t_squared=self.t_squared,
                            reduction=self.reduction)


class InputCoordinationCE(torch.nn.Module):
    """:func:`cil_losses.input_coordination_ce` (JIOC ``L_IC``)."""

    def __init__(self, *, detach_weight: bool = True, normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.detach_weight, self.normalize = bool(detach_weight), bool(normalize)
        self.reduction = _checks.reduction(reduction)

    @_checks.renamed_keywords(targets="target")
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return input_coordination_ce(logits, target, detach_weight=self.detach_weight, normalize=self.normalize,
                                     reduction=self.reduction)


class NewHeadSuppression(torch.nn.Module):
    """:func:`cil_losses.new_head_suppression` (JIOC ``L_sup``) with a fixed ``num_old``."""

    def __init__(self, num_old: int, *, squared: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.num_old, self.squared = num_old, bool(squared)
        self.reduction = _checks.reduction(reduction)

    def forward(self, logits: torch.Tensor, is_memory: torch.Tensor) -> torch.Tensor:
        return new_head_suppression(logits, is_memory, self.num_old, squared=self.squared, reduction=self.reduction)


class JIOCLoss(_WithBoundaries):
    """:func:`cil_losses.jioc_loss` with fixed old-task boundaries and options."""

    def __init__(self, boundaries: Boundaries, *, T: float = 2.0, **options) -> None:
        super().__init__(boundaries, T)
        self.options = dict(options)

    @_checks.renamed_keywords(targets="target")
    def forward(self, logits, target, teacher_logits, is_memory):
        return jioc_loss(logits, target, teacher_logits, self.boundaries, is_memory, T=self.T, **self.options)


class DAKDLoss(torch.nn.Module):
    """:func:`cil_losses.dakd_loss` with the lost counts ``ℓ_c = N_c − m_c`` held as a buffer."""

    lost_counts: torch.Tensor

    def __init__(self, lost_counts: Sequence[float] | torch.Tensor, T: float = 2.0, *,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.T = _checks.temperature("T", T)
        self.reduction = _checks.reduction(reduction)
        self.register_buffer("lost_counts", torch.as_tensor(lost_counts, dtype=torch.float64).detach().clone())

    @_checks.renamed_keywords(student_old_logits="logits")
    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return dakd_loss(logits, teacher_logits, self.lost_counts, self.T, reduction=self.reduction)
