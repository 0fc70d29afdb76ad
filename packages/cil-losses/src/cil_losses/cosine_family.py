"""Losses of the cosine-classifier methods LUCIR (Hou et al., CVPR 2019) and PODNet (Douillard et al., ECCV 2020).

METHODS.md §7–§8 and ``methods/cosine-family.md`` §1.2 and §2.2 of the cil project. Where the paper and the
official code differ, the default is the official code (the published numbers) and the paper is an option:

* LUCIR margin ranking: mean over the ``H·K`` (anchor, hard negative) pairs as the code's
  ``nn.MarginRankingLoss``; the paper's per-anchor sum over ``K`` is ``pair_reduction="sum_over_k"``.
* PODNet classification: the official ``nca()`` (the 0.6 margin cancels, no hinge) in closed form;
  the paper's hinged NCA with the margin on the target is ``mode="paper"``.

The classifiers themselves (``CosineLinear``, ``LocalSimilarityHead``) live in ``cil-models``. PODNet +
BalancedS-CE needs no function of its own: ``balanced_softmax_cross_entropy(η·s, y, class_counts)`` is
``CE(η·s + log n, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _checks
from .errors import LossArgumentError, LossTypeError

__all__ = [
    "less_forget_loss",
    "lucir_lambda",
    "margin_ranking_loss",
    "pod_flat_loss",
    "pod_spatial_loss",
    "podnet_lambdas",
    "podnet_nca_loss",
]

#: ε added to both squared norms of the cosine, as torch's ``cosine_embedding_loss`` (the op behind
#: ``nn.CosineEmbeddingLoss`` in LUCIR and ``F.cosine_embedding_loss`` in PODNet): a zero vector has cosine 0.
COSINE_EPS = 1e-12

PAIR_REDUCTIONS = ("mean", "sum_over_k")
NCA_MODES = ("code", "paper")


# --------------------------------------------------------------------------- argument checks
def _features_2d(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise LossTypeError(f"{name} must be a torch.Tensor of shape [B, D], got {type(value).__name__}")
    if not value.is_floating_point():
        raise LossTypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if value.dim() != 2 or value.shape[0] < 1 or value.shape[1] < 1:
        raise LossArgumentError(f"{name} must have shape [B, D] with B, D >= 1, got shape {tuple(value.shape)}")
    return value


def _feature_pair(name_a: str, a: object, name_b: str, b: object) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _features_2d(name_a, a), _features_2d(name_b, b)
    if a.shape != b.shape:
        raise LossArgumentError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
                                f"{tuple(b.shape)}")
    _checks.same_device(name_a, a, name_b, b)
    return a, b


def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LossTypeError(f"{name} must be an int >= {low}, got {value!r} of type {type(value).__name__}")
    if value < low:
        raise LossArgumentError(f"{name} must be an int >= {low}, got {value}")
    return value


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a finite real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise LossArgumentError(f"{name} must be a finite real number, got {value}")
    return value


def _target_index(target: torch.Tensor, num_classes: int, check: bool) -> torch.Tensor:
    """``target`` as an int64 ``[B, 1]`` index; on accelerators its range is read first when ``check`` (the CPU
    kernels check it themselves: see :func:`_gather`)."""
    if check and target.device.type != "cpu":
        _checks.check_target_range("target", target, num_classes)
    return target.long().view(-1, 1)


def _gather(values: torch.Tensor, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``values.gather(1, index)``, an out-of-range target re-raised as our error (CPU)."""
    try:
        return values.gather(1, index)
    except (RuntimeError, IndexError):
        raise _checks.target_range_error("target", target, values.shape[1]) from None


# --------------------------------------------------------------------------- LUCIR less-forget / POD-flat
def _one_minus_cosine(name_a: str, features: object, name_b: str, teacher: object, reduction: str) -> torch.Tensor:
    features, teacher = _feature_pair(name_a, features, name_b, teacher)
    how = _checks.reduction(reduction)
    f = _checks.upcast(features)
    t = teacher.detach().to(f.dtype)
    with _checks.autocast_off(f):
        dot = _checks.row_dot(f, t)
        norms = (_checks.row_dot(f, f) + COSINE_EPS).sqrt() * (_checks.row_dot(t, t) + COSINE_EPS).sqrt()
        per_sample = 1.0 - dot / norms
    return _checks.reduce(per_sample, how)


def less_forget_loss(features: torch.Tensor, teacher_features: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """LUCIR's less-forget constraint (Hou et al., "Learning a Unified Classifier Incrementally via
    Rebalancing", CVPR 2019): ``L_lf = (1/B) Σ_i [1 − cos(f_i, f*_i)]``.

    ``f`` are the current model's features at the input of the cosine classifier (pooled, before
    normalisation, without the last ReLU), ``f*`` the previous model's on the same samples (detached here:
    no gradient reaches ``teacher_features``). It applies to every sample, new data and exemplars alike.
    The cosine is that of torch's ``cosine_embedding_loss`` with target +1, the official code's
    ``nn.CosineEmbeddingLoss``: ``cos = ⟨f, f*⟩ / sqrt((‖f‖² + ε)(‖f*‖² + ε))``, ``ε = 1e-12``, so a zero vector
    has cosine 0 (loss 1) and finite gradients. Weight it with :func:`lucir_lambda`.

    Args:
        features: ``[B, D]`` student features.
        teacher_features: ``[B, D]`` teacher features (converted to the student's compute dtype).
        reduction: ``"mean"`` (default, over the batch), ``"sum"`` or ``"none"`` (``[B]``).

    Returns a float32 loss for half/bfloat16/float32 features, float64 for float64.

    Example:
        >>> import torch
        >>> from cil_losses.cosine_family import less_forget_loss
        >>> f = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> less_forget_loss(f, torch.tensor([[0.0, 1.0], [2.0, 2.0]]))     # (1 − 0 + 1 − 1) / 2
        tensor(0.5000)
    """
    return _one_minus_cosine("features", features, "teacher_features", teacher_features, reduction)


def pod_flat_loss(features: torch.Tensor, teacher_features: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """PODNet's POD-flat (Douillard et al., "PODNet: Pooled Outputs Distillation for Small-Tasks Incremental
    Learning", ECCV 2020): ``L_flat = (1/B) Σ_i [1 − cos(h_i, h*_i)]`` on the pooled ``raw_features``.

    The same computation as :func:`less_forget_loss` (official ``losses.embeddings_similarity`` =
    ``F.cosine_embedding_loss`` with target +1; the teacher is detached; every sample counts). Weight it with
    ``λ_f`` of :func:`podnet_lambdas`.

    Args:
        features, teacher_features: ``[B, D]``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> from cil_losses.cosine_family import pod_flat_loss
        >>> pod_flat_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]]))   # 1 − 24/25
        tensor(0.0400)
    """
    return _one_minus_cosine("features", features, "teacher_features", teacher_features, reduction)


def lucir_lambda(num_old: int, num_new: int, lambda_base: float = 5.0) -> float:
    """LUCIR's adaptive less-forget weight (Hou et al., CVPR 2019): ``λ = λ_base · sqrt(C_old / C_new)``.

    ``λ_base = 5`` on CIFAR-100, ``10`` on ImageNet (official ``run.sh``: ``--lamda 5|10 --adapt_lamda``).
    ``num_old = 0`` (the base step) gives 0.

    Example:
        >>> from cil_losses.cosine_family import lucir_lambda
        >>> round(lucir_lambda(50, 5), 4)                                   # CIFAR B50, 5-class steps, step 1
        15.8114
    """
    num_old = _int_at_least("num_old", num_old, 0)
    num_new = _int_at_least("num_new", num_new, 1)
    lambda_base = _checks.non_negative_float("lambda_base", lambda_base)
    return lambda_base * math.sqrt(num_old / num_new)


def podnet_lambdas(num_seen: int, num_new: int, flat_base: float = 1.0,
                   spatial_base: float = 3.0) -> tuple[float, float]:
    """PODNet's adaptive POD weights (Douillard et al., ECCV 2020): ``(λ_f, λ_c)`` =
    ``(flat_base, spatial_base) · sqrt(N_seen / C_new)``.

    ``N_seen`` counts every class seen so far, the current task's included (LUCIR uses ``C_old`` instead).
    Bases: 1 and 3 on CIFAR-100, 10 and 8 on ImageNet (official ``podnet_cnn_*.yaml``, ``scheduled_factor``).

    Returns ``(λ_flat, λ_spatial)``.

    Example:
        >>> from cil_losses.cosine_family import podnet_lambdas
        >>> [round(v, 3) for v in podnet_lambdas(55, 5)]                    # CIFAR B50, 5-class steps, step 1
        [3.317, 9.95]
    """
    num_new = _int_at_least("num_new", num_new, 1)
    num_seen = _int_at_least("num_seen", num_seen, 0)
    if num_seen < num_new:
        raise LossArgumentError(f"num_seen counts all classes seen so far, the {num_new} new ones included: it must "
                                f"be >= num_new, got num_seen={num_seen}")
    flat_base = _checks.non_negative_float("flat_base", flat_base)
    spatial_base = _checks.non_negative_float("spatial_base", spatial_base)
    factor = math.sqrt(num_seen / num_new)
    return flat_base * factor, spatial_base * factor


# --------------------------------------------------------------------------- LUCIR margin ranking
def margin_ranking_loss(
    cosines: torch.Tensor,
    target: torch.Tensor,
    num_old: int,
    margin: float = 0.5,
    k: int = 2,
    reduction: str = "mean",
    *,
    pair_reduction: str = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """LUCIR's inter-class separation by hard-negative margin ranking (Hou et al., CVPR 2019).

    On the **unscaled** cosines ``s = ⟨f̂, ŵ_c⟩`` (no σ): the anchors are the samples of old classes
    (``y_i < num_old``: in practice the exemplars), ``H`` of them. For anchor ``i``, ``g_i = s_{i,y_i}`` and
    ``h_{i,1..K}`` are its ``K`` largest cosines among the new classes (columns ``num_old … C−1``):

    * ``pair_reduction="mean"`` (default, the official code's ``nn.MarginRankingLoss``):
      ``L_mr = (1/(H·K)) Σ_i Σ_k max(0, m − g_i + h_{i,k})``;
    * ``pair_reduction="sum_over_k"`` (the paper's Eq. 8 as we read it): ``(1/H) Σ_i Σ_k max(0, m − g_i + h_{i,k})``,
      ``K`` times the default.

    ``K`` is clipped to the number of new classes. With no anchor (no old-class target, e.g. Relaxed
    BalancedS-CE without memory) or no new class the loss is 0, with a graph and a zero gradient.

    Args:
        cosines: ``[B, C]`` unscaled cosine similarities over all seen classes.
        target: ``[B]`` class indices in ``[0, C)``.
        num_old: number of old classes ``C_old`` (``0 ≤ num_old ≤ C``).
        margin: ``m ≥ 0`` (LUCIR: 0.5, ``--dist``).
        k: number of hard negatives ``K ≥ 1`` (LUCIR: 2).
        reduction: over the anchors: ``"mean"`` (default; the loss above), ``"sum"``, or ``"none"``: ``[B]`` with
            each anchor's ``mean_k`` (or ``Σ_k``) of its hinges and 0 for the other samples.
        pair_reduction: ``"mean"`` (code, default) or ``"sum_over_k"`` (paper), how an anchor's ``K`` pairs combine.
        check_targets: on accelerators, read the targets' range first (one host synchronisation); on the CPU the
            check is free and always on.

    Example:
        >>> import torch
        >>> from cil_losses.cosine_family import margin_ranking_loss
        >>> s = torch.tensor([[0.2, 0.9, 0.1, 0.4], [0.0, 0.3, 0.8, 0.1]])  # classes 0, 1 old; 2, 3 new
        >>> margin_ranking_loss(s, torch.tensor([0, 2]), num_old=2)       # one anchor: (0.7 + 0.4) / 2
        tensor(0.5500)
    """
    cosines = _checks.logits_2d("cosines", cosines)
    batch, num_classes = cosines.shape
    target = _checks.targets_1d("target", target, batch, cosines.device)
    num_old = _checks.class_count("num_old", num_old, num_classes)
    margin = _checks.non_negative_float("margin", margin)
    k = _int_at_least("k", k, 1)
    if pair_reduction not in PAIR_REDUCTIONS:
        raise LossArgumentError(f"pair_reduction must be one of {', '.join(map(repr, PAIR_REDUCTIONS))}; "
                                f"got {pair_reduction!r}")
    how = _checks.reduction(reduction)
    s = _checks.upcast(cosines)
    index = _target_index(target, num_classes, check_targets)
    positive = _gather(s, index, target)                               # g = s_y, [B, 1]
    k = min(k, num_classes - num_old)
    if k == 0 or num_old == 0:                                         # no hard negative or no anchor
        zeros = s.narrow(1, 0, 0).sum(1)                               # [B] zeros, in the graph, zero gradient
        return zeros if how == "none" else zeros.sum()
    hard = s.narrow(1, num_old, num_classes - num_old).topk(k, dim=1, sorted=False).values   # h, [B, K]
    hinge = (margin - positive + hard).clamp_min(0.0)
    per_anchor = hinge.sum(1) if pair_reduction == "sum_over_k" else hinge.mean(1)
    is_anchor = target < num_old
    per_sample = torch.where(is_anchor, per_anchor, per_anchor.new_zeros(()))
    if how == "none":
        return per_sample
    if how == "sum":
        return per_sample.sum()
    return per_sample.sum() / is_anchor.sum().clamp_min(1).to(per_sample.dtype)   # H = 0 → 0 (no host sync)


# --------------------------------------------------------------------------- PODNet POD-spatial
def _map_list(name: str, value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise LossTypeError(f"{name} must be a list (or tuple) of [B, C, H, W] tensors, one per layer, got "
                            f"{type(value).__name__}")
    maps = list(value)
    if not maps:
        raise LossArgumentError(f"{name} must hold at least one feature map")
    for index, m in enumerate(maps):
        if not isinstance(m, torch.Tensor):
            raise LossTypeError(f"{name}[{index}] must be a torch.Tensor, got {type(m).__name__}")
        if not m.is_floating_point():
            raise LossTypeError(f"{name}[{index}] must have a floating-point dtype, got {m.dtype}")
        if m.dim() != 4 or min(m.shape) < 1:
            raise LossArgumentError(f"{name}[{index}] must have shape [B, C, H, W] with every size >= 1, got "
                                    f"{tuple(m.shape)}")
    return maps


class _GradInChannelsLast(torch.autograd.Function):
    """Identity whose backward returns the gradient channels_last (applied to channels_last maps only).

    The width/height sums' backward gives an NCHW gradient; added into a channels_last network's gradient it
    sends every batch-norm backward down the slow mixed-format path on CPUs. Values are unchanged.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def _grad_in_map_format(a: torch.Tensor) -> torch.Tensor:
    """``a``; its gradient keeps ``a``'s channels_last format (a no-op for NCHW maps and maps without grad)."""
    if a.requires_grad and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        return _GradInChannelsLast.apply(a)
    return a


def _pod_spatial_embedding(a: torch.Tensor) -> torch.Tensor:
    """``[B, C·H + C·W]``: ``a²`` summed over the width, then over the height, L2-normalised per sample."""
    squared = a.square()
    pooled = torch.cat([squared.sum(3).flatten(1), squared.sum(2).flatten(1)], dim=1)
    return F.normalize(pooled, p=2.0, dim=1)


def pod_spatial_loss(
    student_maps: Sequence[torch.Tensor],
    teacher_maps: Sequence[torch.Tensor],
    reduction: str = "mean",
) -> torch.Tensor:
    """PODNet's POD-spatial distillation (Douillard et al., "PODNet: Pooled Outputs Distillation for
    Small-Tasks Incremental Learning", ECCV 2020; official ``pod`` with ``collapse_channels="spatial"``).

    For each of the ``L`` layers, maps ``a`` (student) and ``a*`` (teacher, detached here) of shape
    ``[B, C, H, W]``: ``p = normalize([Σ_w a²_{c,h,w} (C·H entries), Σ_h a²_{c,h,w} (C·W entries)])`` per
    sample (``F.normalize``: divided by ``max(‖·‖₂, 1e-12)``), likewise ``p*``; then

    ``L_spatial = (1/L) Σ_l (1/B) Σ_i ‖p_{l,i} − p*_{l,i}‖₂``.

    Every sample counts (``only_old=False``); the maps are pre-activation (PODNet's networks have no ReLU
    there). Identical student and teacher maps (the first step of a task) give 0 with a zero gradient.
    Weight it with ``λ_c`` of :func:`podnet_lambdas`. Layers may differ in shape; each student map must have
    its teacher's shape and all share the batch size.

    Args:
        student_maps: list of ``L`` tensors ``[B, C_l, H_l, W_l]``.
        teacher_maps: the previous model's maps, same shapes.
        reduction: ``"mean"`` (default, over the batch), ``"sum"`` or ``"none"`` (``[B]``: each sample's
            ``(1/L) Σ_l ‖p − p*‖``).

    Returns float64 if any map is float64, float32 otherwise (half/bfloat16 maps are squared in float32).

    Example:
        >>> import torch
        >>> from cil_losses.cosine_family import pod_spatial_loss
        >>> a = torch.ones(1, 1, 2, 2)
        >>> b = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
        >>> pod_spatial_loss([a, a], [a, b])                # (0 + ‖[1, 1, 1, 1]/2 − [2, 0, 1, 1]/√6‖) / 2
        tensor(0.3029)
    """
    student = _map_list("student_maps", student_maps)
    teacher = _map_list("teacher_maps", teacher_maps)
    if len(student) != len(teacher):
        raise LossArgumentError(f"student_maps and teacher_maps must have the same number of layers, got "
                                f"{len(student)} and {len(teacher)}")
    how = _checks.reduction(reduction)
    batch = student[0].shape[0]
    total = None
    for index, (a, b) in enumerate(zip(student, teacher)):
        if a.shape != b.shape:
            raise LossArgumentError(f"student_maps[{index}] and teacher_maps[{index}] must have the same shape, got "
                                    f"{tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[0] != batch:
            raise LossArgumentError(f"every map must have the same batch size: student_maps[0] has {batch}, "
                                    f"student_maps[{index}] {a.shape[0]}")
        _checks.same_device(f"student_maps[{index}]", a, f"teacher_maps[{index}]", b)
        a = _checks.upcast(_grad_in_map_format(a))
        b = b.detach().to(a.dtype)
        with _checks.autocast_off(a):
            distance = torch.linalg.vector_norm(_pod_spatial_embedding(a) - _pod_spatial_embedding(b), dim=1)
        total = distance if total is None else total + distance
    return _checks.reduce(total / len(student), how)


# --------------------------------------------------------------------------- PODNet NCA
def _scale_tensor(scale: object, like: torch.Tensor) -> torch.Tensor:
    """``scale`` as a 0-d tensor of ``like``'s dtype and device (a tensor keeps its graph)."""
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise LossTypeError(f"scale must be a floating-point tensor (the learnable η), got dtype {scale.dtype}")
        if scale.numel() != 1:
            raise LossArgumentError(f"scale must be a single number (one-element tensor), got shape "
                                    f"{tuple(scale.shape)}")
        _checks.same_device("similarities", like, "scale", scale)
        return scale.reshape(()).to(like.dtype)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise LossTypeError(f"scale must be a real number or a one-element tensor, got {scale!r} of type "
                            f"{type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise LossArgumentError(f"scale must be finite, got {scale}")
    return torch.tensor(float(scale), dtype=like.dtype, device=like.device)


def _offsets_tensor(class_offsets: object, like: torch.Tensor) -> torch.Tensor:
    """``[C]`` or ``[B, C]`` offsets in ``like``'s dtype: no NaN, no +inf, a finite entry in every row (−inf: the
    class leaves the normaliser). One host read for the check."""
    if not isinstance(class_offsets, torch.Tensor):
        raise LossTypeError(f"class_offsets must be a torch.Tensor of shape [C] or [B, C], got "
                            f"{type(class_offsets).__name__}")
    if not class_offsets.is_floating_point():
        raise LossTypeError(f"class_offsets must have a floating-point dtype, got {class_offsets.dtype}")
    if class_offsets.shape != like.shape and class_offsets.shape != like.shape[1:]:
        raise LossArgumentError(f"class_offsets must have shape [{like.shape[1]}] or {list(like.shape)}, got "
                                f"{list(class_offsets.shape)}")
    _checks.same_device("similarities", like, "class_offsets", class_offsets)
    values = class_offsets.detach()
    bad = torch.isnan(values).any() | (values == math.inf).any() | ~torch.isfinite(values).any(-1).all()
    if bool(bad):
        raise LossArgumentError("class_offsets must not hold NaN or +inf, and every row needs a finite entry "
                                "(−inf removes a class, e.g. log of a count 0)")
    return class_offsets.to(like.dtype)


def _logsumexp_or_minus_inf(x: torch.Tensor) -> torch.Tensor:
    """``log Σ_j exp(x_j)`` per row, ``−inf`` (with a zero gradient, not NaN) for a row that is all ``−inf``."""
    shift = x.detach().amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, shift.new_zeros(()))
    total = (x - shift).exp().sum(1)
    nonempty = total > 0
    log_total = torch.log(torch.where(nonempty, total, total.new_ones(())))
    return torch.where(nonempty, log_total + shift.squeeze(1), total.new_full((), -math.inf))


def podnet_nca_loss(
    similarities: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor | float,
    margin: float = 0.6,
    mode: str = "code",
    class_offsets: torch.Tensor | None = None,
    reduction: str = "mean",
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """PODNet's classification loss on the local-similarity classifier (Douillard et al., ECCV 2020).

    ``s`` are the class similarities of the LSC head (``[B, C]``, unscaled), ``η`` the learnable scale
    (``scale``; gradients flow into it), ``z = η·s + o`` with the optional ``class_offsets`` ``o``.

    * ``mode="code"`` (default): what the official ``inclearn/lib/losses/base.py: nca`` computes (PODNet
      config: ``exclude_pos_denominator=True``, no hinge). The margin is subtracted from every logit and
      cancels in its max-shift, so ``margin`` has **no effect**; in closed form, with ``M = max_j z_j``
      (for ``o = 0`` and ``η > 0``: ``η·max_j s_j``)

      ``ℓ_i = −z_{i,y} + log( exp(M_i) + Σ_{j≠y} exp(z_{i,j}) )``,

      i.e. softmax-CE on ``z`` with the target's own denominator term replaced by the largest logit (plain CE
      when the target is the arg-max). Computed shifted by ``M`` (stable for any scale); as in the code, the
      gradient flows through the max.
    * ``mode="paper"``: the paper's hinged NCA with the margin ``δ`` on the target only,

      ``ℓ_i = max(0, −log( exp(η(s_{i,y} − δ) + o_y) / Σ_{j≠y} exp(η s_{i,j} + o_j) ))``

      (``= max(0, logsumexp_{j≠y} z_{i,j} − z_{i,y} + η·δ)``; the denominator excludes the target; a row with
      no other class, ``C = 1`` or every other offset ``−inf``, gives 0).

    ``class_offsets`` (e.g. ``log n_c``) are added to ``η·s`` before either form. An offset ``−inf`` (count 0)
    removes its class exactly: no mass, zero gradient, no NaN; a target in such a class has an infinite
    loss (finite gradients), as in :func:`~cil_losses.balanced_softmax_cross_entropy`. For PODNet +
    BalancedS-CE (``CE(η·s + log n, y)``) use ``balanced_softmax_cross_entropy(η·s, y, class_counts)``.

    Args:
        similarities: ``[B, C]`` class similarities ``s`` (PODNet: in ``[−4, 0]``).
        target: ``[B]`` class indices in ``[0, C)``.
        scale: ``η``, a Python number or a one-element floating tensor (the learnable ``FactorScalar``).
        margin: ``δ`` (PODNet: 0.6); used by ``mode="paper"`` only.
        mode: ``"code"`` (default) or ``"paper"``.
        class_offsets: optional ``[C]`` or ``[B, C]`` added to ``η·s`` (no NaN or ``+inf``; ``−inf`` allowed as
            above, one host read to check).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[B]``).
        check_targets: on accelerators, read the targets' range first (one host synchronisation).

    Returns a float32 loss for half/bfloat16/float32 similarities, float64 for float64.

    Example:
        >>> import torch
        >>> from cil_losses.cosine_family import podnet_nca_loss
        >>> s = torch.tensor([[-0.5, -0.1, -2.0], [-0.2, -1.0, -3.0]])
        >>> y = torch.tensor([0, 0])
        >>> podnet_nca_loss(s, y, scale=torch.tensor(4.0))                # sample 2: target is the arg-max → CE
        tensor(1.1667)
        >>> podnet_nca_loss(s, y, scale=4.0, margin=0.0)                   # the margin has no effect
        tensor(1.1667)
        >>> podnet_nca_loss(s, y, scale=4.0, mode="paper")
        tensor(2.0003)
    """
    similarities = _checks.logits_2d("similarities", similarities)
    batch, num_classes = similarities.shape
    target = _checks.targets_1d("target", target, batch, similarities.device)
    if mode not in NCA_MODES:
        raise LossArgumentError(f"mode must be one of {', '.join(map(repr, NCA_MODES))}; got {mode!r}")
    margin = _finite_float("margin", margin)
    how = _checks.reduction(reduction)
    s = _checks.upcast(similarities)
    eta = _scale_tensor(scale, s)
    index = _target_index(target, num_classes, check_targets)
    with _checks.autocast_off(s):
        z = s * eta
        if class_offsets is not None:
            z = z + _offsets_tensor(class_offsets, s)
        if mode == "code":
            shifted = z - z.max(dim=1, keepdim=True).values               # z − M ≤ 0; the gradient flows through M
            picked = _gather(shifted, index, target).squeeze(1)          # z_y − M
            denominator = shifted.scatter(1, index, 0.0)                 # the target's term → exp(M − M) = 1
            per_sample = torch.logsumexp(denominator, dim=1) - picked
        else:
            picked = _gather(z, index, target).squeeze(1) - eta * margin  # η(s_y − δ) + o_y
            others = z.scatter(1, index, -math.inf)                      # Σ_{j≠y}
            per_sample = (_logsumexp_or_minus_inf(others) - picked).clamp_min(0.0)
    return _checks.reduce(per_sample, how)
