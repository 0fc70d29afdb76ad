"""Knowledge distillation: over one class set, and task-wise over old task slices.

Notation of METHODS.md: student logits ``a``, teacher logits ``b``, temperature ``T``,
``KD_T(a, b) = -(1/B) Σ_i Σ_c softmax(b_i/T)_c · log softmax(a_i/T)_c``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _checks
from .errors import LossArgumentError
from .segments import Boundaries, SegmentPlan, plan_for

__all__ = ["kd_loss", "output_coordination_kd", "segmented_kd", "task_wise_kd"]


def _pair(student: object, teacher: object) -> tuple[torch.Tensor, torch.Tensor]:
    student = _checks.logits_2d("logits", student, min_columns=0)
    teacher = _checks.logits_2d("teacher_logits", teacher, min_columns=0)
    _checks.same_batch("logits", student, "teacher_logits", teacher)
    _checks.same_device("logits", student, "teacher_logits", teacher)
    return student, teacher


@_checks.renamed_keywords(student_logits="logits")
def kd_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float = 2.0,
    *,
    t_squared: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Distillation with temperature (Hinton et al. 2015) as cross-entropy with soft targets.

    ``KD_T(a, b) = -(1/B) Σ_i Σ_c softmax(b_i/T)_c · log softmax(a_i/T)_c``, times ``T²`` when
    ``t_squared``. This is ``KL(softmax(b/T) ‖ softmax(a/T))`` plus the teacher's entropy, a constant
    for the student: same gradients, different value.

    The caller picks the class subset by slicing columns (e.g. ``student[:, :C_old]``); both tensors
    must have the same shape. Plain differentiable tensor operations (twice differentiable, as the
    look-ahead of Meta BalancedS-CE needs). Computed in float32 for half/bfloat16 inputs; the teacher is
    converted to the student's compute dtype.

    Args:
        logits: ``[B, K]`` student logits (before 1.0: ``student_logits``).
        teacher_logits: ``[B, K]``.
        T: temperature > 0.
        t_squared: multiply by ``T²`` (keeps gradient magnitudes comparable across temperatures).
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` (``[B]``).

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])
        >>> L.kd_loss(z, teacher, T=2.0)
        tensor(1.0987)
    """
    student_logits, teacher_logits = _pair(logits, teacher_logits)
    if student_logits.shape[1] < 1:
        raise LossArgumentError("logits must have at least one class column (the distilled classes)")
    if student_logits.shape != teacher_logits.shape:
        raise LossArgumentError(
            f"logits and teacher_logits must have the same shape (slice the student's columns), "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    T = _checks.temperature("T", T)
    how = _checks.reduction(reduction)
    log_p_student = F.log_softmax(_checks.upcast(student_logits) / T, dim=1)
    p_teacher = F.softmax(_checks.upcast(teacher_logits).to(log_p_student.dtype) / T, dim=1)
    per_sample = -(p_teacher * log_p_student).sum(dim=1)
    if t_squared:
        per_sample = per_sample * (T * T)
    return _checks.reduce(per_sample, how)


class SegmentedKDFunction(torch.autograd.Function):
    """Per-sample distillation summed over task slices, fused (constant launches for any #slices).

    ``out_i = scale · Σ_s Σ_{c ∈ S_s} p̂_ic · (h_ic − log p_ic)`` with ``p = softmax_seg(z/T)``,
    ``p̂ = softmax_seg(ẑ/T)``, ``h = log p̂`` (KL, ``kl=True``) or ``0`` (soft-target CE).

    Gradients: ``∂/∂z = (scale/T)·(p − p̂)`` (each slice of ``p̂`` sums to 1), and for the teacher
    ``∂/∂ẑ = (scale/T)·p̂·(u − segsum(p̂·u))`` with ``u = h − log p``. The forward keeps ``log p`` and
    ``p̂`` so that the student's backward is three in-place passes.
    """

    @staticmethod
    def forward(ctx, student, teacher, plan: SegmentPlan, T: float, scale: float, kl: bool):  # type: ignore[override]
        with _checks.autocast_off(student):
            return SegmentedKDFunction._forward(ctx, student, teacher, plan, T, scale, kl)

    @staticmethod
    def _forward(ctx, student, teacher, plan: SegmentPlan, T: float, scale: float, kl: bool):
        dtype = _checks.compute_dtype(student)            # the student's compute dtype (the package's rule)
        log_p = plan.log_softmax(student.to(dtype) / T)
        teacher_scaled = teacher.to(dtype) / T          # a fresh buffer, reused below
        teacher_grad = ctx.needs_input_grad[1]
        if kl or teacher_grad:
            log_q = plan.log_softmax(teacher_scaled)
            q = torch.exp(log_q, out=teacher_scaled)
        else:
            log_q, q = None, plan.softmax(teacher_scaled)
        if kl:
            diff = (log_q - log_p) if teacher_grad else log_q.sub_(log_p)
            per_sample = _checks.row_dot(q, diff)
        else:
            per_sample = -_checks.row_dot(q, log_p)
        ctx.save_for_backward(log_p, q, log_q if teacher_grad else None)
        ctx.plan, ctx.T, ctx.scale, ctx.kl = plan, T, scale, kl
        return per_sample * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        log_p, q, log_q = ctx.saved_tensors
        coef = (grad_out.to(log_p.dtype) * (ctx.scale / ctx.T)).unsqueeze(1)
        grad_student = grad_teacher = None
        if ctx.needs_input_grad[0]:
            grad_student = log_p.exp().sub_(q).mul_(coef)
        if ctx.needs_input_grad[1]:
            u = (log_q - log_p) if ctx.kl else -log_p
            qu = q * u
            grad_teacher = coef * (qu - q * ctx.plan.segment_sum(qu))
        return grad_student, grad_teacher, None, None, None, None


@_checks.renamed_keywords(student_logits="logits")
def segmented_kd(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    boundaries: Boundaries,
    T: float = 2.0,
    *,
    kl: bool = True,
    t_squared: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Distillation summed over task slices: ``Σ_s D(softmax(ẑ[S_s]/T), softmax(z[S_s]/T))``.

    ``D`` is the KL divergence (``kl=True``) or the soft-target cross-entropy (``kl=False``, the
    ``KD_T`` of METHODS.md); both have the same gradient for the student. Only the columns
    ``[0, boundaries[-1])`` of both tensors are used; extra columns (e.g. the student's new classes)
    are ignored. ``boundaries == [0]`` (no old task) gives a zero loss that is still attached to
    the graph. The teacher is converted to the student's compute dtype.

    A fused custom autograd Function: forward and backward take a number of kernel launches that does
    not depend on the number of slices.

    Args:
        logits: ``[B, ≥ boundaries[-1]]`` student logits (before 1.0: ``student_logits``).
        teacher_logits: ``[B, ≥ boundaries[-1]]``, converted to the student's compute dtype.
        boundaries: ``[0, b_1, ..., b_S]``.
        T: temperature > 0.
        kl: KL divergence (default) or soft-target cross-entropy.
        t_squared: multiply by ``T²``.
        reduction: ``"mean"`` over samples (default), ``"sum"`` or ``"none"``.

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 1.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])
        >>> L.segmented_kd(z, teacher, [0, 2, 3]) == L.task_wise_kd(z, teacher, [0, 2, 3])
        tensor(True)
    """
    student_logits, teacher_logits = _pair(logits, teacher_logits)
    T = _checks.temperature("T", T)
    how = _checks.reduction(reduction)
    plan = plan_for(boundaries)
    if plan is None:
        zero = student_logits[:, :0].sum(dim=1)
        return _checks.reduce(zero.to(_checks.compute_dtype(student_logits)), how)
    for name, t in (("logits", student_logits), ("teacher_logits", teacher_logits)):
        if t.shape[1] < plan.num_columns:
            raise LossArgumentError(
                f"{name} has {t.shape[1]} columns but boundaries end at {plan.num_columns}; "
                f"it needs at least boundaries[-1] columns"
            )
    student = student_logits[:, : plan.num_columns]
    teacher = teacher_logits[:, : plan.num_columns]
    scale = T * T if t_squared else 1.0
    per_sample = SegmentedKDFunction.apply(student, teacher, plan, T, scale, bool(kl))
    return _checks.reduce(per_sample, how)




@_checks.renamed_keywords(student_logits="logits")
def task_wise_kd(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    boundaries: Boundaries,
    T: float = 2.0,
    *,
    t_squared: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Task-wise KD of SS-IL (Ahn et al., ICCV 2021; METHODS.md §2).

    ``L_TKD = (1/B) Σ_i Σ_{s<t} T²·KL(softmax(ẑ_i[S_s]/T) ‖ softmax(z_i[S_s]/T))``: one softmax per old
    task, averaged over all samples (new and replayed), summed over tasks. ``boundaries`` are the
    old tasks' slices ``[0, ..., C_old]``; student columns past ``C_old`` are ignored. Fused (see
    :func:`segmented_kd`; same arguments).

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 1.0]])    # 4 classes: 2 old tasks + new
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])       # 3 old classes
        >>> L.task_wise_kd(z, teacher, boundaries=[0, 2, 3], T=2.0)            # tasks {0, 1} and {2}
        tensor(0.1901)
    """
    return segmented_kd(logits, teacher_logits, boundaries, T, kl=True, t_squared=t_squared,
                        reduction=reduction)


@_checks.renamed_keywords(student_logits="logits")
def output_coordination_kd(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    boundaries: Boundaries,
    T: float = 2.0,
    *,
    t_squared: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Output coordination of JIOC (IJCAI 2024, eq. 8; METHODS.md §3).

    ``L_OC = Σ_{s<t} KD_T(z[:, S_s], ẑ[:, S_s])``: soft-target cross-entropy per old task (one softmax
    per task), over every sample of the batch, summed over tasks; no ``T²`` by default.
    ``boundaries`` are the old tasks' slices; student columns past ``C_old`` are ignored. Fused
    (see :func:`segmented_kd`; same arguments).

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 1.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])
        >>> L.output_coordination_kd(z, teacher, boundaries=[0, 2, 3], T=2.0)
        tensor(0.6852)
    """
    return segmented_kd(logits, teacher_logits, boundaries, T, kl=False, t_squared=t_squared,
                        reduction=reduction)
