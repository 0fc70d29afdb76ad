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
from .distillation import kd_loss, output_coordination_kd, task_wise_kd
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

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, self.T, t_squared=self.t_squared, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"T={self.T}, t_squared={self.t_squared}, reduction={self.reduction!r}"


class LogitAdjustedCE(torch.nn.Module):
    """``CE(z + offsets, y)`` with the offsets held as a buffer (moves with ``.to(device)``)."""

    offsets: torch.Tensor

    def __init__(self, offsets: torch.Tensor, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _checks.reduction(reduction)
        self.register_buffer("offsets", torch.as_tensor(offsets).detach().clone())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logit_adjusted_cross_entropy(logits, targets, self.offsets, self.reduction)


class BalancedSoftmaxCE(torch.nn.Module):
    """BalancedS-CE / old-class weight α / Relaxed ε with the offsets ``log λ`` computed once per phase.

    Call :meth:`set_counts` when the counts change (each phase); the forward then costs one addition
    more than plain cross-entropy.
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
        self.register_buffer("offsets", torch.zeros(0))
        self.set_counts(class_counts, num_old, alpha, eps)

    def set_counts(
        self, class_counts: Sequence[float] | torch.Tensor, num_old: int = 0, alpha: float = 1.0,
        eps: float | None = None,
    ) -> None:
        """Recompute ``log λ`` for new counts / old-class split / α / ε."""
        offsets = balanced_softmax_offsets(class_counts, num_old, alpha, eps, min_lambda=self.min_lambda)
        self.num_old, self.alpha, self.eps = num_old, alpha, eps
        # tensor counts keep their device; sequences follow the module's device
        self.offsets = offsets if isinstance(class_counts, torch.Tensor) else offsets.to(self.offsets.device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        offsets = self._buffers["offsets"]        # the buffer without nn.Module.__getattr__ (every step)
        logits = _checks.logits_2d("logits", logits)
        targets = _checks.targets_1d("targets", targets, logits.shape[0])
        if offsets.shape[0] != logits.shape[1]:
            raise LossArgumentError(f"logits have {logits.shape[1]} columns but the counts given to "
                                    f"BalancedSoftmaxCE have {offsets.shape[0]} entries (call set_counts)")
        return _shifted_cross_entropy(logits, targets, offsets, self.reduction)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        saved = state_dict.get(prefix + "offsets")
        if isinstance(saved, torch.Tensor) and saved.shape != self.offsets.shape:
            self.offsets = torch.zeros(saved.shape, dtype=saved.dtype, device=self.offsets.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_classes={self.offsets.numel()}, num_old={self.num_old}, alpha={self.alpha}, eps={self.eps}"


class SeparatedSoftmaxCE(torch.nn.Module):
    """:func:`cil_losses.separated_softmax_cross_entropy` with a fixed ``num_old``."""

    def __init__(self, num_old: int, reduction: str = "mean") -> None:
        super().__init__()
        self.num_old = num_old
        self.reduction = _checks.reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, is_replay: torch.Tensor | None) -> torch.Tensor:
        return separated_softmax_cross_entropy(logits, targets, self.num_old, is_replay, self.reduction)


class _WithBoundaries(torch.nn.Module):
    def __init__(self, boundaries: Boundaries, T: float = 2.0) -> None:
        super().__init__()
        self.boundaries = parse_boundaries(boundaries)
        self.T = _checks.temperature("T", T)

    def extra_repr(self) -> str:
        return f"boundaries={list(self.boundaries)}, T={self.T}"


class TaskWiseKD(_WithBoundaries):
    """:func:`cil_losses.task_wise_kd` (SS-IL) over fixed old-task boundaries."""

    def __init__(self, boundaries: Boundaries, T: float = 2.0, *, t_squared: bool = True) -> None:
        super().__init__(boundaries, T)
        self.t_squared = bool(t_squared)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return task_wise_kd(student_logits, teacher_logits, self.boundaries, self.T, t_squared=self.t_squared)


class OutputCoordinationKD(_WithBoundaries):
    """:func:`cil_losses.output_coordination_kd` (JIOC ``L_OC``) over fixed old-task boundaries."""

    def __init__(self, boundaries: Boundaries, T: float = 2.0, *, t_squared: bool = False) -> None:
        super().__init__(boundaries, T)
        self.t_squared = bool(t_squared)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return output_coordination_kd(student_logits, teacher_logits, self.boundaries, self.T,
                                      t_squared=self.t_squared)


class InputCoordinationCE(torch.nn.Module):
    """:func:`cil_losses.input_coordination_ce` (JIOC ``L_IC``)."""

    def __init__(self, *, detach_weight: bool = True, normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.detach_weight, self.normalize = bool(detach_weight), bool(normalize)
        self.reduction = _checks.reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return input_coordination_ce(logits, targets, detach_weight=self.detach_weight, normalize=self.normalize,
                                     reduction=self.reduction)


class NewHeadSuppression(torch.nn.Module):
    """:func:`cil_losses.new_head_suppression` (JIOC ``L_sup``) with a fixed ``num_old``."""

    def __init__(self, num_old: int, *, squared: bool = False) -> None:
        super().__init__()
        self.num_old, self.squared = num_old, bool(squared)

    def forward(self, logits: torch.Tensor, is_memory: torch.Tensor) -> torch.Tensor:
        return new_head_suppression(logits, is_memory, self.num_old, squared=self.squared)


class JIOCLoss(_WithBoundaries):
    """:func:`cil_losses.jioc_loss` with fixed old-task boundaries and options."""

    def __init__(self, boundaries: Boundaries, *, T: float = 2.0, **options) -> None:
        super().__init__(boundaries, T)
        self.options = dict(options)

    def forward(self, logits, targets, teacher_logits, is_memory):
        return jioc_loss(logits, targets, teacher_logits, self.boundaries, is_memory, T=self.T, **self.options)


class DAKDLoss(torch.nn.Module):
    """:func:`cil_losses.dakd_loss` with the lost counts ``ℓ_c = N_c − m_c`` held as a buffer."""

    lost_counts: torch.Tensor

    def __init__(self, lost_counts: Sequence[float] | torch.Tensor, T: float = 2.0) -> None:
        super().__init__()
        self.T = _checks.temperature("T", T)
        self.register_buffer("lost_counts", torch.as_tensor(lost_counts, dtype=torch.float32).detach().clone())

    def forward(self, student_old_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return dakd_loss(student_old_logits, teacher_logits, self.lost_counts, self.T)
