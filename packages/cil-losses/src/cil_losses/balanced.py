"""Logit-adjusted cross-entropy and the Balanced Softmax family (Jodelet et al., ICANN 2021 / CVIU 2022).

BalancedS-CE: ``q_k = λ_k e^{z_k} / Σ_j λ_j e^{z_j}``, loss ``-log q_y``, i.e. ``CE(z + log λ, y)``
(METHODS.md §1). At test time the raw logits are used.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _checks
from .errors import LossArgumentError, LossTypeError

__all__ = [
    "DEFAULT_MIN_LAMBDA",
    "balanced_softmax_cross_entropy",
    "balanced_softmax_offsets",
    "logit_adjusted_cross_entropy",
    "relaxed_eps_default",
]

#: Floor applied to λ before the log: a class with λ = 0 (no sample, or Relaxed ε = 0) gets the offset
#: ``log(1e-12) ≈ -27.6``, i.e. about 1e-12 of the mass of a class with one sample, instead of ``-inf``.
DEFAULT_MIN_LAMBDA = 1e-12

Counts = Sequence[float] | torch.Tensor


def logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    offsets: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy on shifted logits: ``CE(z + o, y)`` (logit adjustment, Menon et al. 2021).

    Args:
        logits: ``[B, C]``.
        targets: ``[B]`` class indices.
        offsets: ``[C]`` (one per class) or ``[B, C]``; gradients flow into ``offsets`` if it requires them.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns a float32 loss for half/bfloat16 logits (computed in float32). On CPU, for
    ``B·C ≥ FUSED_MIN_NUMEL`` (100,000) and offsets without gradient, this runs
    :class:`ShiftedCrossEntropyFunction` (same values to float rounding, faster, twice differentiable);
    otherwise ``F.cross_entropy(z + o, y)``. Targets must be class indices in ``[0, C)``.
    """
    logits = _checks.logits_2d("logits", logits)
    shape = logits.shape
    targets = _checks.targets_1d("targets", targets, shape[0])
    how = _checks.reduction(reduction)
    if not isinstance(offsets, torch.Tensor):
        raise LossTypeError(f"offsets must be a torch.Tensor of shape [C] or [B, C], got {type(offsets).__name__}")
    offsets_shape = offsets.shape
    if offsets_shape != shape and offsets_shape != shape[1:]:
        raise LossArgumentError(
            f"offsets must have shape [{logits.shape[1]}] or {list(logits.shape)}, got {list(offsets.shape)}"
        )
    return _shifted_cross_entropy(logits, targets, offsets, how)


#: Smallest ``B·C`` for which :func:`_shifted_cross_entropy` uses :class:`ShiftedCrossEntropyFunction` on
#: CPU. Below it the Function's fixed Python cost outweighs what it saves. Measured fwd+bwd against
#: ``F.cross_entropy(z + o)`` on one thread (2-core AMD EPYC, AVX2, torch 2.14.1): equal at 64K–77K elements
#: (B·C = 64·1000, 256·300); the Function is 1.16× faster at 256·500 and 1.58× at 256·1000, 0.79× at 256·100.
FUSED_MIN_NUMEL = 100_000

_LOG2E, _LN2 = _checks.LOG2E, _checks.LN2


class ShiftedCrossEntropyFunction(torch.autograd.Function):
    """``CE(z + o, y)`` fused for CPU: ``ℓ_i = log Σ_j e^{z_ij+o_j} − (z_iy+o_y)``, ``∂ℓ_i/∂z = softmax(z+o)_i − e_y``.

    Forward on base-2 logits ``s = (z + o)·log₂e − max`` (one pass builds them, as in
    :func:`cil_losses.dgr._softmax2_`: PyTorch's CPU ``exp2`` is 1.5–1.8× as fast as its ``exp``):
    ``ℓ_i = ln 2·(log₂ Σ_j 2^{s_ij} − s_iy)``; it keeps the unnormalised ``2^s`` and the row sums, so the
    backward is one scaling pass and a scatter of ``−1`` at the targets (``F.cross_entropy`` recomputes an
    ``exp`` of its log-probabilities there). With ``create_graph=True`` the backward is recomputed from the
    saved inputs with differentiable operations, so the loss stays twice differentiable in ``z``.
    ``o``: ``[C]`` or ``[B, C]``, no gradient (:func:`_shifted_cross_entropy` routes offsets that need one
    to ``F.cross_entropy``). Targets must be class indices in ``[0, C)``. CPU tensors only: the backward
    reads the upstream gradient of a reduced loss as a Python number.
    """

    @staticmethod
    def forward(ctx, logits, targets, offsets, how: str):  # type: ignore[override]
        # no autocast guard needed: none of these operations is on an autocast list
        s = torch.add(offsets * _LOG2E, logits, alpha=_LOG2E)          # (z + o)·log₂e, a fresh [B, C] buffer
        s.sub_(s.amax(dim=1, keepdim=True))
        index = targets.view(-1, 1)
        try:
            picked = s.gather(1, index)                                 # [B, 1]
        except RuntimeError as err:
            raise LossArgumentError(f"targets must be class indices in [0, {s.shape[1]}): {err}") from None
        total = s.exp2_().sum(dim=1, keepdim=True)                      # 2^s in place; Σ ≥ 1 (the maximum is 2^0)
        per_sample = total.log2().sub_(picked)                          # ℓ / ln 2, [B, 1]
        if how == "none":
            loss = per_sample.view(-1).mul_(_LN2)
        else:
            loss = per_sample.sum().mul_(_LN2 / s.shape[0] if how == "mean" else _LN2)
        ctx.save_for_backward(logits, offsets)                          # for a create_graph backward only
        ctx.exp2_s, ctx.total, ctx.index, ctx.how = s, total, index, how
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        exp2_s, total, index, how = ctx.exp2_s, ctx.total, ctx.index, ctx.how
        batch = exp2_s.shape[0]
        if torch.is_grad_enabled():                                     # create_graph: differentiable recomputation
            logits, offsets = ctx.saved_tensors
            coef = grad_out.view(-1, 1) if how == "none" else grad_out / batch if how == "mean" else grad_out
            target_mask = torch.zeros_like(exp2_s).scatter_(1, index, 1.0)
            return (torch.softmax(logits + offsets, dim=1) - target_mask) * coef, None, None, None
        if how == "none":
            coef = grad_out.view(-1, 1)
            grad = exp2_s * (coef / total)                              # softmax(z + o)·coef
            grad.scatter_add_(1, index, coef.neg())
        else:
            coef = grad_out.item() / batch if how == "mean" else grad_out.item()
            grad = exp2_s * total.reciprocal().mul_(coef)
            grad.scatter_(1, index, -coef, reduce="add")
        return grad, None, None, None


def _shifted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor, how: str) -> torch.Tensor:
    dtype = logits.dtype                      # dtypes are singletons: `is` (this runs on every step)
    if dtype is not torch.float32 and dtype is not torch.float64:
        logits, dtype = logits.float(), torch.float32             # half/bfloat16: computed in float32
    if offsets.dtype is not dtype:
        offsets = offsets.to(dtype)
    if targets.dtype is not torch.int64:                          # any integer dtype (F.cross_entropy: int64/uint8)
        targets = targets.long()
    if logits.numel() >= FUSED_MIN_NUMEL and logits.device.type == "cpu" and not offsets.requires_grad:
        return ShiftedCrossEntropyFunction.apply(logits, targets, offsets, how)
    return F.cross_entropy(logits + offsets, targets, reduction=how)


def _counts_tensor(class_counts: Counts, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    if isinstance(class_counts, torch.Tensor):
        if class_counts.is_complex() or class_counts.dtype == torch.bool:
            raise LossTypeError(f"class_counts must hold real numbers, got dtype {class_counts.dtype}")
        counts = class_counts.to(dtype=dtype, device=device if device is not None else class_counts.device)
    elif isinstance(class_counts, Sequence) and not isinstance(class_counts, (str, bytes)):
        try:
            counts = torch.tensor([float(c) for c in class_counts], dtype=dtype, device=device)
        except (TypeError, ValueError) as err:
            raise LossTypeError(f"class_counts must be numbers, got {class_counts!r}") from err
    else:
        raise LossTypeError(
            f"class_counts must be a 1-D tensor or a sequence of numbers, got {type(class_counts).__name__}"
        )
    if counts.dim() != 1 or counts.shape[0] < 1:
        raise LossArgumentError(f"class_counts must be a non-empty 1-D tensor (one count per class), got shape "
                                f"{tuple(counts.shape)}")
    if bool(((counts < 0) | ~torch.isfinite(counts)).any()):
        raise LossArgumentError(f"class_counts must be finite and >= 0, got {counts.tolist()}")
    return counts


def balanced_softmax_offsets(
    class_counts: Counts,
    num_old: int = 0,
    alpha: float | torch.Tensor = 1.0,
    eps: float | None = None,
    *,
    min_lambda: float = DEFAULT_MIN_LAMBDA,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Offsets ``log λ_c`` of BalancedS-CE and its variants (METHODS.md §1).

    * BalancedS-CE: ``λ_c = n_c``.
    * old-class weight: ``λ_c = α·n_c`` for old classes (``c < num_old``), ``n_c`` for new ones.
    * Relaxed BalancedS-CE (``eps`` given): ``λ_c = ε`` for old classes, ``n_c`` for new ones
      (ε = 0 is BalancedS-CE without memory).

    ``λ`` is floored at ``min_lambda`` before the log (a zero count or ε = 0 gives a class almost no
    probability mass, ``≈ 1e-12`` of a one-sample class, and never ``-inf``/NaN).

    Args:
        class_counts: ``n_c`` for every seen class, ``[C]`` (counts available in the current phase).
        num_old: number of old classes (the first ``num_old`` entries).
        alpha: old-class weight ≥ 0; a tensor keeps its autograd graph (Meta BalancedS-CE learns it).
        eps: Relaxed ε ≥ 0 for old classes; cannot be combined with ``alpha != 1``.
        min_lambda: floor of ``λ`` (> 0).
        dtype: output dtype (default: float64 for float64 counts, else float32).
        device: output device (default: that of ``class_counts``, or CPU for sequences).

    Returns:
        ``[C]`` float tensor of offsets ``log λ_c`` (unnormalised; CE is invariant to a shared shift).
    """
    if dtype is None:
        dtype = torch.float64 if isinstance(class_counts, torch.Tensor) and class_counts.dtype == torch.float64 \
            else torch.float32
    counts = _counts_tensor(class_counts, dtype, None if device is None else torch.device(device))
    num_classes = counts.shape[0]
    num_old = _checks.class_count("num_old", num_old, num_classes)
    min_lambda = _checks.temperature("min_lambda", min_lambda)
    if eps is not None:
        eps = _checks.non_negative_float("eps", eps)
        if isinstance(alpha, torch.Tensor) or float(alpha) != 1.0:
            raise LossArgumentError(
                f"alpha and eps cannot be combined: Relaxed BalancedS-CE (eps={eps}) sets λ = eps for old classes; "
                f"leave alpha at 1.0 (got {alpha!r})"
            )
    elif isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1 or not alpha.is_floating_point():
            raise LossTypeError(f"alpha must be a number or a one-element float tensor, got {alpha.dtype} tensor "
                                f"of shape {tuple(alpha.shape)}")
    else:
        alpha = _checks.non_negative_float("alpha", alpha)
    if num_old == 0:
        lam = counts
    elif eps is not None:
        lam = torch.cat([counts.new_full((num_old,), eps), counts[num_old:]])
    elif isinstance(alpha, torch.Tensor):
        lam = torch.cat([counts[:num_old] * alpha.to(device=counts.device, dtype=dtype).reshape(()), counts[num_old:]])
    elif alpha == 1.0:
        lam = counts
    else:
        lam = torch.cat([counts[:num_old] * alpha, counts[num_old:]])
    return lam.clamp_min(min_lambda).log()


def balanced_softmax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: Counts,
    num_old: int = 0,
    alpha: float | torch.Tensor = 1.0,
    eps: float | None = None,
    reduction: str = "mean",
    *,
    min_lambda: float = DEFAULT_MIN_LAMBDA,
) -> torch.Tensor:
    """Balanced Softmax cross-entropy (Jodelet et al., ICANN 2021 / CVIU 2022; METHODS.md §1).

    ``L = -log( λ_y e^{z_y} / Σ_j λ_j e^{z_j} ) = CE(z + log λ, y)`` with ``λ`` from
    :func:`balanced_softmax_offsets` (counts ``n_c``, old-class weight ``α``, Relaxed ``ε``).
    Twice differentiable; ``alpha`` may be a tensor with grad. Computed as in
    :func:`logit_adjusted_cross_entropy` (fused on CPU for large inputs).

    Args:
        logits: ``[B, C]``.
        targets: ``[B]`` class indices.
        class_counts: ``[C]`` training samples per class available in this phase.
        num_old, alpha, eps: see :func:`balanced_softmax_offsets`.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """
    logits = _checks.logits_2d("logits", logits)
    batch, num_classes = logits.shape
    targets = _checks.targets_1d("targets", targets, batch)
    how = _checks.reduction(reduction)
    offsets = _offsets_for_step(class_counts, num_old, alpha, eps, min_lambda,
                                _checks.compute_dtype(logits), logits.device)
    if offsets.shape[0] != num_classes:
        raise LossArgumentError(
            f"class_counts must have one entry per logit column ({num_classes}), got {offsets.shape[0]}"
        )
    return _shifted_cross_entropy(logits, targets, offsets, how)


_CACHE_SIZE = 8
_offset_cache: OrderedDict[tuple, tuple[object, torch.Tensor]] = OrderedDict()


def _offsets_for_step(class_counts, num_old, alpha, eps, min_lambda, dtype, device) -> torch.Tensor:
    """:func:`balanced_softmax_offsets`, memoised for the repeated calls of a training loop.

    The counts are the same object for a whole phase; recomputing (and re-validating, which reads the
    counts on the host) ``log λ`` every step would cost more than the loss. The key holds the identity
    and version counter of a counts tensor (an in-place change invalidates it) or the values of a
    sequence. A tensor ``alpha`` (learned, with a graph) is never cached. Internal: the cached tensor
    is only ever read.
    """
    global _latest
    latest = _latest
    if (latest is not None and type(class_counts) is torch.Tensor and not isinstance(alpha, torch.Tensor)
            and latest[0]() is class_counts and latest[1] == class_counts._version and latest[2] == num_old
            and latest[3] == alpha and latest[4] == eps and latest[5] == min_lambda and latest[6] == dtype
            and latest[7] == device):
        return latest[8]                                            # the usual case: same counts as last step
    key: tuple | None = None
    anchor: object = None
    if not isinstance(alpha, torch.Tensor):
        common = (num_old, alpha, eps, min_lambda, dtype, device)
        if isinstance(class_counts, torch.Tensor):
            if not class_counts.requires_grad:
                key = ("tensor", id(class_counts), class_counts._version, *common)
                anchor = weakref.ref(class_counts)
        else:
            try:
                key = ("values", tuple(float(c) for c in class_counts), *common)
            except (TypeError, ValueError):
                key = None
    if key is not None:
        hit = _offset_cache.get(key)
        if hit is not None and (hit[0] is None or hit[0]() is class_counts):
            _offset_cache.move_to_end(key)
            _remember_latest(class_counts, hit[0], num_old, alpha, eps, min_lambda, dtype, device, hit[1])
            return hit[1]
    offsets = balanced_softmax_offsets(class_counts, num_old, alpha, eps, min_lambda=min_lambda,
                                       dtype=dtype, device=device)
    if key is not None:
        _offset_cache[key] = (anchor, offsets)
        while len(_offset_cache) > _CACHE_SIZE:
            _offset_cache.popitem(last=False)
        _remember_latest(class_counts, anchor, num_old, alpha, eps, min_lambda, dtype, device, offsets)
    return offsets


#: The latest tensor-counts entry of the cache, compared field by field before any key is built
#: (a loss call with the same counts as the previous step then costs well under a microsecond here).
_latest: tuple | None = None


def _remember_latest(class_counts, anchor, num_old, alpha, eps, min_lambda, dtype, device, offsets) -> None:
    global _latest
    if isinstance(anchor, weakref.ref) and type(class_counts) is torch.Tensor:
        _latest = (anchor, class_counts._version, num_old, alpha, eps, min_lambda, dtype, device, offsets)


def relaxed_eps_default(mean_class_count: float) -> float:
    """Default ε of Relaxed BalancedS-CE: 0.2 % of the mean per-class training count of the dataset.

    ≈ 1 on CIFAR-100 (500 images per class), 2.6 on ImageNet-Subset (1300) — CVIU 2022, §4.3.3.
    """
    mean_class_count = _checks.non_negative_float("mean_class_count", mean_class_count)
    return 0.002 * mean_class_count
