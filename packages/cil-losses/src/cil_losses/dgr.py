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
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from . import _checks
from .errors import LossArgumentError, LossTypeError

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
    """KD weight of DGR (He, CVPR 2024): ``λ_KD = λ_b·sqrt(N_seen / N_new)``, ``λ_b = 0.7``.

    ``N_seen``: original training count of all old classes; ``N_new``: count of the new data.

    Example:
        >>> import cil_losses as L
        >>> round(L.dgr_kd_weight(n_seen=5000, n_new=1250), 4)
        1.4
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
    is_old: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class CE gradient weights ``w_c = α_c·r_{group(c)}`` (phase 0: ``w_c = α_c``).

    ``α`` is :func:`dgr_class_balance` and ``r`` :func:`dgr_task_balance` (same guards); this computes
    both in one go with about 20 small tensor operations (it runs in every backward of the reweighted
    layer). ``is_old``: optional ``[C]`` bool mask ``c < num_old`` on ``phi``'s device (the layer keeps
    one per phase; built here when omitted).
    """
    num_classes = phi.shape[0]
    incremental = num_old > 0
    if incremental and num_old >= num_classes and (task_balance or (class_balance and decoupled)):
        raise LossArgumentError(f"num_old must be in [0, {num_classes - 1}] (the new group must not be empty), "
                                f"got {num_old}")
    if incremental and is_old is None and ((class_balance and decoupled) or task_balance):
        is_old = torch.arange(num_classes, device=phi.device) < num_old
    weights = None
    if class_balance:
        positive = phi > 0
        safe = torch.where(positive, phi, math.inf)                   # the minimum runs over Φ_j > 0
        if incremental and decoupled:
            group_min = torch.where(is_old, safe[:num_old].amin(), safe[num_old:].amin())
        else:
            group_min = safe.amin()
        weights = torch.where(positive, group_min / safe, 1.0)        # Φ_c = 0: α_c = 1
    if incremental and task_balance:
        mean_old = phi[:num_old].mean()
        rho = torch.where(mean_old > 0, phi[num_old:].mean() / mean_old, math.inf)   # mean_old Φ = 0: ρ = +inf
        ratio = torch.where(is_old, rho, rho * gamma).clamp_(max=1.0)             # r_old, r_new
        weights = ratio if weights is None else weights * ratio
    return torch.ones_like(phi) if weights is None else weights


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
    class_counts: Sequence[float] | torch.Tensor,
    *,
    min_fraction: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Offsets of DGR's regularised softmax (He, CVPR 2024), ``o_c = log(n_c / Σ_j n_j)``.

    ``L_CE = CE(z + o, y)`` (:func:`logit_adjusted_cross_entropy`) equals BalancedS-CE. Computed in float64 and
    rounded once to ``dtype`` (default float64; the loss converts them to the logits' dtype). A class with
    count 0 gets ``−inf`` (no probability mass); ``min_fraction > 0`` floors ``n_c / Σ n`` instead (the pre-1.0
    default was ``1e-12``).

    Example:
        >>> import cil_losses as L
        >>> L.regularized_softmax_offsets([90, 9, 1, 0])
        tensor([-0.1054, -2.4079, -4.6052,    -inf], dtype=torch.float64)
    """
    min_fraction = _checks.non_negative_float("min_fraction", min_fraction)
    if isinstance(class_counts, torch.Tensor):
        if class_counts.is_complex() or class_counts.dtype == torch.bool:
            raise LossTypeError(f"class_counts must hold real numbers, got dtype {class_counts.dtype}")
        counts = class_counts.detach().to(torch.float64)
    elif isinstance(class_counts, Sequence) and not isinstance(class_counts, (str, bytes)):
        try:
            counts = torch.tensor([float(c) for c in class_counts], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise LossTypeError(f"class_counts must be a sequence of numbers, got {class_counts!r}") from err
    else:
        raise LossTypeError(f"class_counts must be a 1-D tensor or a sequence of numbers, got "
                            f"{type(class_counts).__name__}")
    if counts.dim() != 1 or counts.numel() == 0:
        raise LossArgumentError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if not bool(((counts >= 0) & torch.isfinite(counts)).all()) or not bool(counts.sum() > 0):
        raise LossArgumentError(f"class_counts must be finite, >= 0 and not all zero, got {counts.tolist()}")
    prior = counts / counts.sum()
    if min_fraction > 0:
        prior = prior.clamp_min(min_fraction)
    return prior.log().to(dtype)


def _lost_counts(value: object, num_old: int, like: torch.Tensor) -> torch.Tensor:
    lost = _checks.as_float_vector("lost_counts", value, num_old, like)
    if not bool(((lost >= 0) & torch.isfinite(lost)).all()):
        raise LossArgumentError(f"lost_counts must be finite and >= 0 (N_c − m_c per old class), got {lost.tolist()}")
    return lost


def _dakd_constants(
    lost_counts: Sequence[float] | torch.Tensor, num_old: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The constants of DAKD for one set of lost counts: ``(v, H)``, validated.

    ``v = ℓ/‖ℓ‖₂`` (``[C_old]``, ``0`` when ``‖ℓ‖ = 0``) and ``H = −Σ_c q_c log q_c / log C_old`` with
    ``q_c = (ℓ_c+0.001)/Σ_j(ℓ_j+0.001)`` (0-d, ``1`` when nothing is lost or ``C_old = 1``), in ``like``'s
    compute dtype on its device. Raises :class:`LossArgumentError` unless ``lost_counts`` holds
    ``num_old`` finite numbers ``≥ 0``.
    """
    lost = _lost_counts(lost_counts, num_old, like).detach()     # counts: no gradient flows into them
    norm = torch.linalg.vector_norm(lost)
    some_lost = norm > 0
    v = torch.where(some_lost, lost / torch.where(some_lost, norm, 1.0), 0.0)
    q = (lost + 0.001) / (lost + 0.001).sum()
    if num_old > 1:
        entropy = -(q * q.log()).sum() / math.log(num_old)
        H = torch.where(some_lost, entropy.clamp(0.0, 1.0), 1.0)
    else:
        H = torch.ones((), dtype=lost.dtype, device=lost.device)
    return v.to(lost.dtype), H.to(lost.dtype)


_CACHE_SIZE = 8
_constants_cache: OrderedDict[tuple, tuple[object, tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()


def _dakd_constants_for_step(
    lost_counts: Sequence[float] | torch.Tensor, num_old: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_dakd_constants`, memoised for the repeated calls of a training loop.

    The lost counts are the same object for a whole phase; validating them (which reads them on the
    host: a device synchronisation on an accelerator) and recomputing ``v`` and ``H`` every step cost
    more than the arithmetic they feed. The key holds the identity and version counter of a tensor (an
    in-place change invalidates the entry, so a changed tensor is validated again) or the values of a
    sequence, plus the dtype and device asked for. Cached tensors are only ever read.
    """
    dtype, device = _checks.compute_dtype(like), like.device
    key: tuple | None = None
    anchor: object = None
    if isinstance(lost_counts, torch.Tensor):
        key = ("tensor", id(lost_counts), lost_counts._version, num_old, dtype, device)
        anchor = weakref.ref(lost_counts)
    elif isinstance(lost_counts, Sequence) and not isinstance(lost_counts, (str, bytes)):
        try:
            key = ("values", tuple(float(c) for c in lost_counts), num_old, dtype, device)
        except (TypeError, ValueError):
            key = None  # _dakd_constants raises the argument error
    if key is not None:
        hit = _constants_cache.get(key)
        if hit is not None and (hit[0] is None or hit[0]() is lost_counts):
            _constants_cache.move_to_end(key)
            return hit[1]
    constants = _dakd_constants(lost_counts, num_old, like)
    if key is not None:
        _constants_cache[key] = (anchor, constants)
        while len(_constants_cache) > _CACHE_SIZE:
            _constants_cache.popitem(last=False)
    return constants


_LOG2E, _LN2 = _checks.LOG2E, _checks.LN2


def _softmax2_(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of base-2 logits in place along ``dim``: ``x ← 2^{x} / Σ_k 2^{x_k}``, for ``x`` already
    shifted so that its maximum along ``dim`` is 0 (then ``Σ ≥ 1``). Returns ``(x, Σ)`` (``Σ`` with ``dim`` kept).

    Base-2 logits are natural ones times ``log₂ e``, so this is ``softmax`` of ``x·ln 2``; the caller
    folds the factor into its scaling by ``1/T`` (``z·(log₂ e/T)`` rounds once, like ``z/T``; the factor
    itself is rounded to the compute dtype, a relative change of the temperature below 2⁻²⁴ in
    float32). On CPU, PyTorch's ``exp2`` is 1.5–1.8× as fast as its ``exp`` (0.18–0.24 vs 0.32–0.37 ms at
    256 × 900, one thread, 2-core AMD EPYC), so this ``exp2``/sum/divide sequence costs about what
    ``torch.softmax`` does (~0.32 vs 0.35–0.38 ms there) while the caller shifts several stacked tensors
    with one operation; the accuracy is the same: both are dominated by the rounding of the shifted
    argument (measured: same float32 errors against a float64 reference).
    """
    total = x.exp2_().sum(dim=dim, keepdim=True)
    return x.div_(total), total


class DAKDFunction(torch.autograd.Function):
    """DAKD, fused: ``out_i = −Σ_c q_ic·(H·log p_ic + (1−H)·log a_ic)`` per sample, or its sum or mean.

    ``p = softmax(z/T)``, ``a = softmax(z̃/T)`` with ``z̃ = v⊙z + (1−v)⊙ẑ``, ``q = softmax(ẑ/T)``. With ``w = H·log p + (1−H)·log a``:

    * ``∂out_i/∂z = (1/T)·[H·(p − q) + (1−H)·v⊙(a − q)] = (1/T)·[H·p + u⊙a − (H + u)⊙q]``, ``u = (1−H)·v``;
    * ``∂out_i/∂ẑ = (1/T)·[−q⊙(w − ⟨q, w⟩) + (1−H)·(1−v)⊙(a − q)]``.

    ``v`` (``[C_old]``) and ``H`` (0-d) are constants; ``reduction`` is ``"none"`` (``[B]``), ``"sum"`` or
    ``"mean"`` (0-d). The forward builds the three base-2 logit tensors as the slices of one
    ``[3, B, C_old]`` buffer, so that the row maxima, shifts, ``exp2``, sums and divisions of the two
    student-side softmaxes are one operation each (the teacher's ``q`` is needed first, for the dot
    products): about twenty tensor operations instead of forty, whose fixed cost matters at these sizes.
    It keeps the probabilities ``p``, ``q``, ``a`` (the buffer); the value comes from
    ``⟨q, log₂ p⟩ = ⟨q, x⟩ − log₂ Σ 2^x`` on max-shifted logits ``x`` (no cancellation between two large
    terms). The student's backward is three elementwise passes without ``exp`` (a fourth for ``"none"``,
    which scales every row by its own upstream gradient).
    """

    @staticmethod
    def forward(ctx, student, teacher, v, H, T: float, reduction: str):  # type: ignore[override]
        per_row = reduction == "none"
        keep_log = ctx.needs_input_grad[1]
        scale = _LOG2E / T                                              # base-2 logits (see _softmax2_)
        with _checks.autocast_off(student):
            buffer = student.new_empty((3, *student.shape))             # [p, q, a] once the softmaxes ran
            s, t, adjusted = buffer[0], buffer[1], buffer[2]
            torch.mul(student, scale, out=s)
            torch.mul(teacher.to(s.dtype), scale, out=t)
            torch.lerp(t, s, v, out=adjusted)                           # v⊙z + (1−v)⊙ẑ, scaled alike
            buffer.sub_(buffer.amax(dim=2, keepdim=True))               # every row's maximum is 0
            q, _ = _softmax2_(t)
            pair = buffer[0::2]                                         # [2, B, C_old]: student, adjusted
            if per_row:                                                 # ⟨q, x⟩ per row, [2, B]
                cross = torch.linalg.vecdot(pair, q, dim=-1)
            else:                                                       # summed over the rows, [2]
                cross = torch.mv(pair.reshape(2, -1), q.view(-1))
            shifted = pair.clone() if keep_log else None
            _, total = _softmax2_(pair)                                 # p and a in place; total [2, B, 1]
            log2_total = total.log2_()
            cross = cross.sub_(log2_total.squeeze(2) if per_row else log2_total.sum(dim=(1, 2)))
            factor = -_LN2 / student.shape[0] if reduction == "mean" else -_LN2
            out = torch.lerp(cross[1], cross[0], H).mul_(factor)        # −(H·⟨q,log p⟩ + (1−H)·⟨q,log a⟩)
            mixed = None
            if keep_log:                                                # natural log-probabilities of p and a
                log_pair = shifted.sub_(log2_total).mul_(_LN2)
                mixed = torch.lerp(log_pair[1], log_pair[0], H)         # H·log p + (1−H)·log a
        ctx.save_for_backward(buffer, v, H, mixed)
        ctx.T, ctx.reduction = T, reduction
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        buffer, v, H, mixed = ctx.saved_tensors
        p, q, a = buffer.unbind(0)
        coef = grad_out.to(p.dtype) * (1.0 / (ctx.T * p.shape[0]) if ctx.reduction == "mean" else 1.0 / ctx.T)
        per_row = ctx.reduction == "none"
        if per_row:
            coef = coef.unsqueeze(1)
        grad_student = grad_teacher = None
        if ctx.needs_input_grad[0]:
            # H·p + u⊙a − (H + u)⊙q with u = (1−H)·v; a scalar upstream gradient is folded into the factors
            h_coef = H if per_row else H * coef
            u = (1.0 - H) * v if per_row else ((1.0 - H) * coef) * v
            grad_student = torch.mul(p, h_coef).addcmul_(a, u).addcmul_(q, (u + h_coef).neg_())
            if per_row:
                grad_student.mul_(coef)
        if ctx.needs_input_grad[1]:
            centred = mixed - _checks.row_dot(q, mixed).unsqueeze(1)
            grad_teacher = ((1.0 - H) * (1.0 - v) * (a - q) - q * centred).mul_(coef)
        return grad_student, grad_teacher, None, None, None, None


@_checks.renamed_keywords(student_old_logits="logits")
def dakd_loss(
    logits: torch.Tensor,
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
    on an accelerator) the first time a given tensor (at a given version counter) or sequence of values
    is seen; the validated constants ``v``, ``H`` are then reused, so a training
    loop that passes the same lost counts every step pays neither the check nor the sync again.

    Args:
        logits: ``[B, C_old]`` student logits of the old classes (before 1.0: ``student_old_logits``).
        teacher_logits: ``[B, C_old]``, converted to the student's compute dtype.
        lost_counts: ``[C_old]`` ``ℓ_c ≥ 0``.
        T: temperature.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])
        >>> L.dakd_loss(z, teacher, lost_counts=[480, 0, 0])       # class 0 lost most of its data
        tensor(1.0328)
        >>> L.dakd_loss(z, teacher, lost_counts=[0, 0, 0]) == L.kd_loss(z, teacher)    # nothing lost: plain KD
        tensor(True)
    """
    student = _checks.logits_2d("logits", logits)
    teacher = _checks.logits_2d("teacher_logits", teacher_logits)
    if student.shape != teacher.shape:
        raise LossArgumentError(
            f"logits and teacher_logits must have the same shape [B, C_old], got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    _checks.same_device("logits", student, "teacher_logits", teacher)
    how = _checks.reduction(reduction)
    T = _checks.temperature("T", T)
    v, H = _dakd_constants_for_step(lost_counts, student.shape[1], student)
    return DAKDFunction.apply(_checks.upcast(student), teacher, v, H, T, how)
