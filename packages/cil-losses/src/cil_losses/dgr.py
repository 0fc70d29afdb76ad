"""GR / DGR / DAKD (He, CVPR 2024; METHODS.md §4): the functional pieces.

The stateful part (the accumulated-gradient tracker and the reweighted classifier layer) is
:class:`cil_losses.GradientReweighter`; it is built from the ratio functions below, which are
exported so that they can be tested and logged on their own.

Order of operations and guards follow the authors' public code (JiangpengHe/imbalanced_cil,
``src/approach/DGR.py``, ``train_epoch``): in every step the CE row-gradient norms of *this* step are
added to ``Φ`` first, and the class-balance and task-balance ratios are then computed from the
updated ``Φ``; in phase 0 the class-balance minimum runs over all classes; the loss-balance ratio
uses this step's CE row norms of *all* classes (old and new) against this step's KD row norms of the
old classes. The authors' code has no guard against zeros (it would produce NaN or infinities);
the guards here are documented on each function and change nothing when every ``Φ_c > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from . import _checks
from .errors import LossArgumentError

__all__ = [
    "dakd_loss",
    "dgr_attenuation_gamma",
    "dgr_class_balance",
    "dgr_class_weights",
    "dgr_kd_weight",
    "dgr_loss_balance",
    "dgr_task_balance",
    "regularized_softmax_offsets",
]


def _non_negative_number(name: str, value: object) -> float:
    return _checks.non_negative_float(name, value)


def dgr_kd_weight(n_seen: float, n_new: float, *, lambda_b: float = 0.7) -> float:
    """KD weight of DGR: ``λ_KD = λ_b·sqrt(N_seen / N_new)``, ``λ_b = 0.7``.

    ``N_seen``: original training count of all old classes; ``N_new``: count of the new data.
    """
    n_seen = _non_negative_number("n_seen", n_seen)
    n_new = _checks.temperature("n_new", n_new)
    lambda_b = _non_negative_number("lambda_b", lambda_b)
    return lambda_b * math.sqrt(n_seen / n_new)


def dgr_attenuation_gamma(n_seen: float, n_new: float, eta: float = 1.0) -> float:
    """Attenuation of the new-task balance ratio: ``γ = exp(−η·N_seen / (N_seen + N_new))``."""
    n_seen = _non_negative_number("n_seen", n_seen)
    n_new = _non_negative_number("n_new", n_new)
    eta = _non_negative_number("eta", eta)
    if n_seen + n_new <= 0:
        raise LossArgumentError(f"n_seen + n_new must be > 0, got n_seen={n_seen}, n_new={n_new}")
    return math.exp(-eta * n_seen / (n_seen + n_new))


def _positive_min(values: torch.Tensor) -> torch.Tensor:
    """Minimum over the strictly positive entries (``inf`` when there is none)."""
    return torch.where(values > 0, values, torch.full_like(values, math.inf)).amin()


def dgr_class_balance(phi: torch.Tensor, num_old: int, *, decoupled: bool = True) -> torch.Tensor:
    """Class-balance ratio ``α_c = min_{j ∈ G(c)} Φ_j / Φ_c``.

    ``G(c)`` is every class in phase 0 (``num_old == 0``) or when not ``decoupled`` (GR); with
    ``decoupled`` (DGR) it is the group of ``c``: old classes ``[0, num_old)`` or new ones.
    Guard: the minimum runs over ``Φ_j > 0`` and a class with ``Φ_c = 0`` (no CE gradient yet) gets
    ``α_c = 1``.
    """
    if num_old == 0 or not decoupled:
        group_min = _positive_min(phi).expand_as(phi)
    else:
        group_min = torch.cat([
            _positive_min(phi[:num_old]).expand(num_old),
            _positive_min(phi[num_old:]).expand(phi.shape[0] - num_old),
        ])
    return torch.where(phi > 0, group_min / torch.where(phi > 0, phi, 1.0), 1.0)


def dgr_task_balance(phi: torch.Tensor, num_old: int, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Task-balance ratios with attenuation: ``ρ = mean_new Φ / mean_old Φ``,
    ``r_old = min(1, ρ)``, ``r_new = min(1, ρ·γ)``. Returns 0-d tensors ``(r_old, r_new)``.

    Guard: ``mean_old Φ = 0`` gives ``ρ = +inf`` (nothing to attenuate: ``r_old = r_new = 1``).
    """
    if not 0 < num_old < phi.shape[0]:
        raise LossArgumentError(f"num_old must be in [1, {phi.shape[0] - 1}] for the task balance, got {num_old}")
    mean_old = phi[:num_old].mean()
    mean_new = phi[num_old:].mean()
    rho = torch.where(mean_old > 0, mean_new / torch.where(mean_old > 0, mean_old, 1.0), math.inf)
    return rho.clamp(max=1.0), (rho * gamma).clamp(max=1.0)


def dgr_class_weights(
    phi: torch.Tensor,
    num_old: int,
    gamma: float,
    *,
    decoupled: bool = True,
    class_balance: bool = True,
    task_balance: bool = True,
) -> torch.Tensor:
    """Per-class CE gradient weights ``w_c = α_c·r_{group(c)}`` (phase 0: ``w_c = α_c``)."""
    num_classes = phi.shape[0]
    weights = dgr_class_balance(phi, num_old, decoupled=decoupled) if class_balance else torch.ones_like(phi)
    if num_old > 0 and task_balance:
        r_old, r_new = dgr_task_balance(phi, num_old, gamma)
        is_old = torch.arange(num_classes, device=phi.device) < num_old
        weights = weights * torch.where(is_old, r_old, r_new)
    return weights


def dgr_loss_balance(weights: torch.Tensor, ce_norms: torch.Tensor, kd_norms: torch.Tensor) -> torch.Tensor:
    """Loss-balance ratio ``β = ‖(w_c·g_c^CE)_c‖₂ / ‖(g_c^KD)_{c old}‖₂`` (0-d tensor).

    ``ce_norms`` over all classes, ``kd_norms`` over the old classes (this step's row-gradient
    norms; the KD norms include the KD weight). Guard: ``‖g^KD‖ = 0`` (the KD gradient is zero, so
    β has no effect) gives ``β = 1``.
    """
    numerator = torch.linalg.vector_norm(weights * ce_norms)
    denominator = torch.linalg.vector_norm(kd_norms)
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1.0), 1.0)


def regularized_softmax_offsets(
    class_counts: Sequence[float] | torch.Tensor, *, min_fraction: float = 1e-12
) -> torch.Tensor:
    """Offsets of DGR's regularised softmax, ``o_c = log(n_c / Σ_j n_j)`` (the ``"log_prior"`` default).

    ``L_CE = CE(z + o, y)`` equals BalancedS-CE. A zero count is floored at ``min_fraction``.
    """
    if isinstance(class_counts, torch.Tensor):
        counts = class_counts.to(torch.float64 if class_counts.dtype == torch.float64 else torch.float32)
    else:
        counts = torch.tensor([float(c) for c in class_counts], dtype=torch.float32)
    if counts.dim() != 1 or counts.numel() == 0:
        raise LossArgumentError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if not bool(((counts >= 0) & torch.isfinite(counts)).all()) or not bool(counts.sum() > 0):
        raise LossArgumentError(f"class_counts must be finite, >= 0 and not all zero, got {counts.tolist()}")
    return (counts / counts.sum()).clamp_min(min_fraction).log()


def _lost_counts(value: object, num_old: int, like: torch.Tensor) -> torch.Tensor:
    lost = _checks.as_float_vector("lost_counts", value, num_old, like)
    if not bool(((lost >= 0) & torch.isfinite(lost)).all()):
        raise LossArgumentError(f"lost_counts must be finite and >= 0 (N_c − m_c per old class), got {lost.tolist()}")
    return lost


class DAKDFunction(torch.autograd.Function):
    """Per-sample DAKD, fused: ``out_i = −Σ_c q_ic·(H·log p_ic + (1−H)·log a_ic)``.

    ``p = softmax(z/T)``, ``a = softmax(z̃/T)`` with ``z̃ = v⊙z + (1−v)⊙ẑ``, ``q = softmax(ẑ/T)``. With ``w = H·log p + (1−H)·log a``:

    * ``∂out_i/∂z = (1/T)·[H·(p − q) + (1−H)·v⊙(a − q)]``;
    * ``∂out_i/∂ẑ = (1/T)·[−q⊙(w − ⟨q, w⟩) + (1−H)·(1−v)⊙(a − q)]``.

    ``v`` (``[C_old]``) and ``H`` (0-d) are constants.
    """

    @staticmethod
    def forward(ctx, student, teacher, v, H, T: float):  # type: ignore[override]
        with _checks.autocast_off(student):
            s = student / T
            t = teacher.to(s.dtype) / T
            log_p = torch.log_softmax(s, dim=1)
            adjusted = torch.sub(s, t, out=s).mul_(v).add_(t)          # (v⊙z + (1−v)⊙ẑ) / T, in s's buffer
            log_a = torch.log_softmax(adjusted, dim=1)
            q = torch.softmax(t, dim=1)
            mixed = torch.lerp(log_a, log_p, H)                         # H·log p + (1−H)·log a
            per_sample = -_checks.row_dot(q, mixed)
        ctx.save_for_backward(log_p, log_a, q, v, H, mixed if ctx.needs_input_grad[1] else None)
        ctx.T = T
        return per_sample

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        log_p, log_a, q, v, H, mixed = ctx.saved_tensors
        coef = (grad_out.to(log_p.dtype) / ctx.T).unsqueeze(1)
        a_minus_q = log_a.exp().sub_(q)
        grad_student = grad_teacher = None
        if ctx.needs_input_grad[0]:
            grad_student = torch.lerp(a_minus_q * v, log_p.exp().sub_(q), H).mul_(coef)
        if ctx.needs_input_grad[1]:
            centred = mixed - _checks.row_dot(q, mixed).unsqueeze(1)
            grad_teacher = ((1.0 - H) * (1.0 - v) * a_minus_q - q * centred).mul_(coef)
        return grad_student, grad_teacher, None, None, None


def dakd_loss(
    student_old_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    lost_counts: Sequence[float] | torch.Tensor,
    T: float = 2.0,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Distribution-aware KD of DGR (He, CVPR 2024; METHODS.md §4).

    Lost data per old class ``ℓ_c = N_c − m_c``; ``v = ℓ/‖ℓ‖₂``; ``q_c = (ℓ_c+0.001)/Σ_j(ℓ_j+0.001)``;
    ``H = −Σ_c q_c log q_c / log C_old ∈ [0, 1]``; adjusted logits ``z̃ = v⊙z + (1−v)⊙ẑ``;
    ``L_DAKD = H·KD_T(z, ẑ) + (1−H)·KD_T(z̃, ẑ)`` over all old classes jointly.

    Guards: ``‖ℓ‖ = 0`` (nothing lost) gives ``v = 0``, ``H = 1``: plain ``KD_T(z, ẑ)``; a single old
    class (``log C_old = 0``) gives ``H = 1`` (KD over one class is 0 anyway). The caller multiplies by
    ``λ_KD·T²`` (:func:`dgr_kd_weight`).

    A fused custom autograd Function (:class:`DAKDFunction`: one teacher softmax, closed-form
    backward); once differentiable. ``lost_counts`` is validated on the host (one sync when it lives
    on an accelerator).

    Args:
        student_old_logits: ``[B, C_old]`` student logits of the old classes.
        teacher_logits: ``[B, C_old]``.
        lost_counts: ``[C_old]`` ``ℓ_c ≥ 0``.
        T: temperature.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """
    student = _checks.logits_2d("student_old_logits", student_old_logits)
    teacher = _checks.logits_2d("teacher_logits", teacher_logits)
    if student.shape != teacher.shape:
        raise LossArgumentError(
            f"student_old_logits and teacher_logits must have the same shape [B, C_old], got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    how = _checks.reduction(reduction)
    num_old = student.shape[1]
    lost = _lost_counts(lost_counts, num_old, student)
    norm = torch.linalg.vector_norm(lost)
    some_lost = norm > 0
    v = torch.where(some_lost, lost / torch.where(some_lost, norm, 1.0), 0.0)
    q = (lost + 0.001) / (lost + 0.001).sum()
    if num_old > 1:
        entropy = -(q * q.log()).sum() / math.log(num_old)
        H = torch.where(some_lost, entropy.clamp(0.0, 1.0), 1.0)
    else:
        H = torch.ones((), dtype=lost.dtype, device=lost.device)
    T = _checks.temperature("T", T)
    per_sample = DAKDFunction.apply(_checks.upcast(student), teacher, v.to(lost.dtype), H.to(lost.dtype), T)
    return _checks.reduce(per_sample, how)
