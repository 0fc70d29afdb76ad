"""Losses of the network-expanding methods: DER's auxiliary classifier and FOSTER's logits alignment and
balanced distillation (METHODS.md §10–11; ``methods/expansion-family.md`` §1.2 and §2.2).

* DER (Yan et al., CVPR 2021): the auxiliary head on the newest extractor's features has ``C_new + 1``
  outputs; output 0 stands for "any old class". :func:`aux_targets` maps labels to it and
  :func:`auxiliary_loss` is ``CE(z_aux, ỹ)``.
* FOSTER (Wang et al., ECCV 2022): per-class weights from effective numbers
  (:func:`effective_number_weights`, Cui et al. CVPR 2019), the logits-alignment cross-entropy of the boosting
  stage ``CE(z ⊘ w, y)`` (:func:`logits_alignment_cross_entropy`) and the class-weighted distillation of the
  compression stage (:func:`balanced_kd`).

All functions are vectorised (no loop over classes), computed in float32 for half/bfloat16 inputs and in
float64 for float64 inputs.
"""

from __future__ import annotations

import torch

from . import _checks
from .errors import LossArgumentError, LossTypeError

__all__ = ["auxiliary_loss", "aux_targets", "balanced_kd", "effective_number_weights",
           "logits_alignment_cross_entropy"]


def aux_targets(target: torch.Tensor, num_old: int) -> torch.Tensor:
    """Targets of DER's auxiliary classifier (Yan et al., CVPR 2021): ``ỹ = 0`` for an old class
    (``y < num_old``), ``ỹ = y − num_old + 1`` for a new one.

    Example:
        >>> import torch, cil_losses.expansion as E
        >>> E.aux_targets(torch.tensor([0, 3, 5, 6]), num_old=5)
        tensor([0, 0, 1, 2])
    """
    if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.is_floating_point():
        raise LossTypeError(f"target must be a 1-D integer tensor, got {target!r}")
    if isinstance(num_old, bool) or not isinstance(num_old, int) or num_old < 0:
        raise LossArgumentError(f"num_old must be an int >= 0, got {num_old!r}")
    target = target.long()
    return torch.where(target < num_old, torch.zeros_like(target), target - num_old + 1)


def auxiliary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_old: int,
    *,
    reduction: str = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """DER's auxiliary loss (Yan et al., CVPR 2021, eq. 5; official ``_compute_loss``):
    ``CE(z_aux, ỹ)`` with ``ỹ`` from :func:`aux_targets`, over every sample (new data and memory).

    Args:
        logits: ``[B, C_new + 1]`` outputs of the auxiliary head (column 0: "any old class").
        target: ``[B]`` labels over all seen classes ``[0, num_old + C_new)``.
        num_old: number of old classes.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        check_targets: on accelerators, check the mapped targets' range (one host synchronisation).

    Example:
        >>> import torch, cil_losses.expansion as E
        >>> z_aux = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
        >>> E.auxiliary_loss(z_aux, torch.tensor([1, 6]), num_old=5)     # targets become 0 and 2
        tensor(0.1698)
    """
    logits = _checks.logits_2d("logits", logits)
    target = _checks.targets_1d("target", target, logits.shape[0], logits.device)
    how = _checks.reduction(reduction)
    mapped = aux_targets(target, num_old)
    return _checks.cross_entropy(_checks.upcast(logits), mapped, how,
                                 check=check_targets or logits.device.type == "cpu")


def effective_number_weights(class_counts: object, beta: float, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class weights from effective numbers (Cui et al., CVPR 2019), as FOSTER uses them (Wang et al.,
    ECCV 2022, official ``per_cls_weights``).

    ``E_c = (1 − β^{n_c}) / (1 − β)`` (``E_c = n_c`` when ``β = 1``), ``w_c = (1/E_c) / ((1/C) Σ_j 1/E_j)``:
    the weights have mean 1 over the ``C`` classes, frequent classes get small weights. FOSTER's code counts a
    new class as 500 images on CIFAR-100 whatever its true count; pass the true counts ``n_c``. A count below 1
    (a class without samples in the phase) is taken as 1, so that every weight stays finite.

    Args:
        class_counts: ``[C]`` counts (a sequence or a tensor).
        beta: ``β ∈ [0, 1]`` (FOSTER: β1 = 0.96 for boosting, β2 = 0.97 for compression).
        like: the result is on this tensor's device, in its compute dtype (default: float64 on the CPU when
            ``class_counts`` is not a tensor, else the counts' device and compute dtype).

    Example:
        >>> import cil_losses.expansion as E
        >>> E.effective_number_weights([20, 20, 500, 500], beta=0.96)
        tensor([1.2837, 1.2837, 0.7163, 0.7163], dtype=torch.float64)
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= float(beta) <= 1.0:
        raise LossArgumentError(f"beta must be a real number in [0, 1], got {beta!r}")
    if like is None:
        if isinstance(class_counts, torch.Tensor):
            dtype = torch.float64 if class_counts.dtype == torch.float64 else torch.float32
            counts = class_counts.detach().to(dtype)
        else:
            counts = torch.as_tensor(class_counts, dtype=torch.float64)
    else:
        counts = torch.as_tensor(class_counts).detach().to(device=like.device, dtype=_checks.compute_dtype(like))
    if counts.dim() != 1 or counts.numel() == 0:
        raise LossArgumentError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise LossArgumentError("class_counts must be finite and >= 0")
    counts = counts.clamp_min(1.0)
    beta = float(beta)
    if beta == 1.0:
        effective = counts
    else:
        # (1 − β^n)/(1 − β) with expm1 for accuracy when β is close to 1
        effective = -torch.expm1(counts * torch.log(torch.tensor(beta, dtype=counts.dtype, device=counts.device))) \
            / (1.0 - beta) if beta > 0.0 else torch.ones_like(counts)
    inverse = 1.0 / effective
    return inverse / inverse.mean()


def _weights(name: str, class_weights: object, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    w = _checks.as_float_vector(name, class_weights, num_classes, like)
    if not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise LossArgumentError(f"{name} must be finite and > 0")
    return w


def logits_alignment_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: object,
    *,
    reduction: str = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """FOSTER's logits alignment (Wang et al., ECCV 2022; official ``_feature_boosting``):
    ``CE(z ⊘ w, y)``, every logit ``z_c`` divided by the class weight ``w_c``
    (:func:`effective_number_weights` with β1). Old (rare) classes have ``w_c > 1``: their training logits are
    shrunk, so the raw head learns larger old logits. Inference uses the raw ``z``.

    Args:
        logits: ``[B, C]``.
        target: ``[B]`` class indices in ``[0, C)``.
        class_weights: ``[C]`` weights ``w_c > 0``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        check_targets: on accelerators, check the targets' range (one host synchronisation).

    Example:
        >>> import torch, cil_losses.expansion as E
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        >>> E.logits_alignment_cross_entropy(z, torch.tensor([0, 2]), torch.tensor([2.0, 1.0, 0.5]))
        tensor(0.2569)
    """
    logits = _checks.logits_2d("logits", logits)
    target = _checks.targets_1d("target", target, logits.shape[0], logits.device)
    how = _checks.reduction(reduction)
    z = _checks.upcast(logits)
    w = _weights("class_weights", class_weights, z.shape[1], z)
    return _checks.cross_entropy(z / w, target.long(), how, check=check_targets or z.device.type == "cpu")


def balanced_kd(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_weights: object,
    T: float = 2.0,
    *,
    reduction: str = "mean",
    check_weights: bool = True,
) -> torch.Tensor:
    """FOSTER's balanced distillation of the compression stage (Wang et al., ECCV 2022; official ``BKD``).

    ``p̃_ic = w_c softmax(ẑ_i/T)_c / Σ_k w_k softmax(ẑ_i/T)_k`` (teacher's raw logits, re-weighted by the
    class weights of β2 and renormalised), ``L_BKD = −(1/B) Σ_i Σ_c p̃_ic log softmax(z_i/T)_c``: no ``T²``,
    no hard-label term. The teacher is treated as a constant (no gradient flows into it).

    Args:
        logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits (the boosted two-extractor network).
        class_weights: ``[C]`` weights ``w_c > 0``.
        T: temperature > 0 (FOSTER: 2).
        reduction: ``"mean"`` over the batch (default), ``"sum"`` or ``"none"`` (``[B]``).
        check_weights: verify that every weight is finite and > 0 (two host synchronisations on an accelerator;
            a caller that validated its weights once, e.g. per phase, turns it off for its steps).

    Example:
        >>> import torch, cil_losses.expansion as E
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])
        >>> E.balanced_kd(z, teacher, torch.tensor([2.0, 1.0, 0.5]), T=2.0)
        tensor(1.1277)
    """
    logits = _checks.logits_2d("logits", logits)
    teacher = _checks.logits_2d("teacher_logits", teacher_logits)
    if teacher.shape != logits.shape:
        raise LossArgumentError(f"logits {tuple(logits.shape)} and teacher_logits {tuple(teacher.shape)} must have "
                                "the same shape")
    _checks.same_device("logits", logits, "teacher_logits", teacher)
    T = _checks.temperature("T", T)
    how = _checks.reduction(reduction)
    z = _checks.upcast(logits)
    w = (_weights("class_weights", class_weights, z.shape[1], z) if check_weights
         else _checks.as_float_vector("class_weights", class_weights, z.shape[1], z))
    soft = torch.softmax(teacher.detach().to(z.dtype) / T, dim=1) * w
    soft = soft / soft.sum(dim=1, keepdim=True)
    per_sample = -(soft * torch.log_softmax(z / T, dim=1)).sum(dim=1)
    return _checks.reduce(per_sample, how)
