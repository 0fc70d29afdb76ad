"""JIOC: joint input and output coordination (IJCAI 2024; METHODS.md §3).

``L_JIOC = L_IC + γ1·L_OC + γ2·L_sup`` with the input-coordination weighted CE ``L_IC`` (eq. 7),
the per-old-task distillation ``L_OC`` (eq. 8, :func:`cil_losses.output_coordination_kd`) and the
suppression of the new task's head on memory samples ``L_sup`` (eq. 9).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _checks
from .distillation import kd_loss, output_coordination_kd
from .errors import LossArgumentError
from .segments import Boundaries, parse_boundaries

__all__ = ["input_coordination_ce", "jioc_loss", "new_head_suppression"]


class InputCoordinationFunction(torch.autograd.Function):
    """Per-sample ``δ_i·(−log p_{i,y_i}) / m`` with ``δ_i = 1 − p_{i,y_i}``, ``p = softmax(z_i)``.

    ``m = mean_i δ_i`` when normalising, else 1. With ``ℓ_i = −log p_{i,y_i}``, upstream gradient ``g``
    and ``J = Σ_i g_i·out_i``:

    * ``∂J/∂ℓ_k = g_k δ_k / m``;
    * ``∂J/∂δ_k = g_k ℓ_k / m − [normalise]·(Σ_i g_i out_i) / (m B)`` when δ is kept in the graph, else 0;
    * ``∂J/∂z_k = (p_k − e_{y_k}) · (∂J/∂ℓ_k + p_{k,y_k}·∂J/∂δ_k)``, since ``∂ℓ/∂z = p − e_y`` and
      ``∂δ/∂z = p_y (p − e_y)``.
    """

    @staticmethod
    def forward(ctx, logits, targets, detach_weight: bool, normalize: bool):  # type: ignore[override]
        log_p = torch.log_softmax(_checks.upcast(logits), dim=1)
        log_py = log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        loss = -log_py
        delta = -torch.expm1(log_py)  # 1 − p_y, accurate when p_y → 1
        if normalize:
            m = delta.mean().clamp_min(torch.finfo(delta.dtype).tiny)
        else:
            m = torch.ones((), dtype=delta.dtype, device=delta.device)
        out = delta * loss / m
        ctx.save_for_backward(log_p, targets, delta, loss, m, out)
        ctx.detach_weight, ctx.normalize = detach_weight, normalize
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        log_p, targets, delta, loss, m, out = ctx.saved_tensors
        g = grad_out.to(log_p.dtype)
        coef = g * delta / m
        if not ctx.detach_weight:
            d_delta = g * loss / m
            if ctx.normalize:
                d_delta = d_delta - (g * out).sum() / (m * g.shape[0])
            coef = coef + (-loss).exp() * d_delta  # p_y = exp(−ℓ)
        grad = log_p.exp()
        grad.scatter_add_(1, targets.unsqueeze(1), torch.full_like(coef, -1.0).unsqueeze(1))
        return grad * coef.unsqueeze(1), None, None, None


@_checks.renamed_keywords(targets="target")
def input_coordination_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    detach_weight: bool = True,
    normalize: bool = False,
    reduction: str = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """Input coordination of JIOC (IJCAI 2024, eqs. 6–7): cross-entropy weighted by the target's error.

    ``δ_i = |p_{i,y_i} − 1|`` with ``p = softmax(z_i)`` over all seen classes;
    ``L_IC = (1/B) Σ_i δ_i·(−log p_{i,y_i})``. Well-learned (frequent) classes get small weights.

    Args:
        logits: ``[B, C]``.
        target: ``[B]`` class indices in ``[0, C)``.
        detach_weight: treat δ as a constant (default, METHODS.md); ``False`` keeps it in the graph.
        normalize: divide δ by its batch mean (mean weight 1; default off).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[B]``, with the same δ / mean).
        check_targets: on accelerators, read the targets' range (one host synchronisation) so that a bad index
            raises our error; on the CPU always on.

    A custom autograd Function (one fused backward). Computed in float32 for half/bfloat16 logits.

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
        >>> L.input_coordination_ce(z, torch.tensor([0, 1]))      # sample 1 is far from its class: weight ≈ 0.9
        tensor(0.9869)
    """
    logits = _checks.logits_2d("logits", logits)
    target = _checks.targets_1d("target", target, logits.shape[0], logits.device)
    if target.dtype is not torch.int64:
        target = target.long()
    how = _checks.reduction(reduction)
    if check_targets or logits.device.type == "cpu":
        _checks.check_target_range("target", target, logits.shape[1])
    per_sample = InputCoordinationFunction.apply(logits, target, bool(detach_weight), bool(normalize))
    return _checks.reduce(per_sample, how)


def new_head_suppression(
    logits: torch.Tensor,
    is_memory: torch.Tensor,
    num_old: int,
    *,
    squared: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """New-head suppression of JIOC (IJCAI 2024, eq. 9): memory samples put no mass on new classes.

    ``L_sup = (1/B_old) Σ_{i ∈ memory} Σ_{k ∈ S_t} p_{i,k}`` with ``p = softmax(z_i)`` over all seen
    classes and ``S_t = [num_old, C)`` the current task's classes (target 0 for each). ``squared``
    uses ``Σ_k p_{i,k}²`` (squared error to the zero target; METHODS.md leaves it open). A batch without
    memory samples gives 0 (still attached to the graph).

    Args:
        logits: ``[B, C]``.
        is_memory: ``[B]`` bool, True for exemplar-memory samples.
        num_old: number of old classes (``0 ≤ num_old ≤ C``).
        squared: the squared variant.
        reduction: ``"mean"`` over the memory samples (default), ``"sum"`` over them, or ``"none"``: ``[B]``,
            each memory sample's term and 0 for the others.

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 1.0]])
        >>> L.new_head_suppression(z, is_memory=torch.tensor([True, False]), num_old=2)   # mass on classes 2, 3
        tensor(0.1315)
    """
    logits = _checks.logits_2d("logits", logits)
    batch, num_classes = logits.shape
    num_old = _checks.class_count("num_old", num_old, num_classes)
    how = _checks.reduction(reduction)
    memory = _checks.mask_1d("is_memory", is_memory, batch, logits.device)
    p_new = torch.softmax(_checks.upcast(logits), dim=1)[:, num_old:]
    mass = (p_new * p_new if squared else p_new).sum(dim=1)
    weight = memory.to(mass.dtype)
    if how == "none":
        return mass * weight
    total = (mass * weight).sum()
    return total if how == "sum" else total / weight.sum().clamp_min(1.0)


@_checks.renamed_keywords(targets="target")
def jioc_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    boundaries: Boundaries,
    is_memory: torch.Tensor,
    *,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    T: float = 2.0,
    use_ic: bool = True,
    use_oc: bool = True,
    use_sup: bool | None = None,
    detach_weight: bool = True,
    normalize: bool = False,
    squared: bool = False,
    return_parts: bool = False,
    check_targets: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """JIOC total loss (Joint Input and Output Coordination, IJCAI 2024, eq. 10) with the ablation switches
    of the paper's Table 4 (METHODS.md §3).

    ``L = C + γ1·D + γ2·L_sup`` where the classification term ``C`` is ``L_IC`` (``use_ic``) or plain CE,
    the distillation ``D`` is ``L_OC`` (one softmax per old task, ``use_oc``) or plain ``KD_T`` over all
    old classes jointly, and the suppression ``L_sup`` is on when ``use_sup`` (default: ``use_oc``).
    Rows of Table 4: ``CE + KD`` (``use_ic=False, use_oc=False``), ``L_IC + KD`` (``use_oc=False``),
    ``CE + L_OC (+L_sup)`` (``use_ic=False``), ``L_JIOC`` (defaults).

    No ``reduction``: the three terms are means over different sets of samples (the batch, the batch, the
    memory samples); take the per-sample terms from the three functions for anything else.

    Args:
        logits: ``[B, C]`` over all seen classes.
        target: ``[B]`` class indices in ``[0, C)``.
        teacher_logits: ``[B, C_old]`` of the previous model (``None`` allowed when there is no old task).
        boundaries: old tasks' slices ``[0, ..., C_old]`` (``[0]`` in phase 0: classification term only).
        is_memory: ``[B]`` bool, True for exemplar-memory samples.
        gamma1, gamma2: weights of the distillation and suppression terms.
        T: distillation temperature.
        detach_weight, normalize: options of :func:`input_coordination_ce`.
        squared: option of :func:`new_head_suppression`.
        return_parts: also return a dict of the (unweighted) terms for logging.
        check_targets: see :func:`input_coordination_ce`.

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 1.0]])
        >>> teacher = torch.tensor([[1.0, 1.0, -1.0], [0.0, 2.0, 2.0]])
        >>> total, parts = L.jioc_loss(z, torch.tensor([0, 3]), teacher, [0, 2, 3], torch.tensor([True, False]),
        ...                            return_parts=True)
        >>> sorted(parts)
        ['ic', 'oc', 'sup']
    """
    logits = _checks.logits_2d("logits", logits)
    targets = _checks.targets_1d("target", target, logits.shape[0], logits.device)
    gamma1 = _checks.non_negative_float("gamma1", gamma1)
    gamma2 = _checks.non_negative_float("gamma2", gamma2)
    items = parse_boundaries(boundaries)
    num_old = items[-1]
    if num_old > logits.shape[1]:
        raise LossArgumentError(f"boundaries end at {num_old} but logits have only {logits.shape[1]} columns")
    parts: dict[str, torch.Tensor] = {}
    if use_ic:
        parts["ic"] = input_coordination_ce(logits, targets, detach_weight=detach_weight, normalize=normalize,
                                            check_targets=check_targets)
    else:
        parts["ce"] = _checks.cross_entropy(_checks.upcast(logits), targets, "mean", check=check_targets)
    total = next(iter(parts.values()))
    if num_old > 0:
        if teacher_logits is None:
            raise LossArgumentError(f"teacher_logits is required when there are old classes (boundaries {list(items)})")
        if use_oc:
            parts["oc"] = output_coordination_kd(logits, teacher_logits, items, T)
            total = total + gamma1 * parts["oc"]
        else:
            teacher = _checks.logits_2d("teacher_logits", teacher_logits)
            parts["kd"] = kd_loss(logits[:, :num_old], teacher[:, :num_old], T)
            total = total + gamma1 * parts["kd"]
        if use_oc if use_sup is None else use_sup:
            parts["sup"] = new_head_suppression(logits, is_memory, num_old, squared=squared)
            total = total + gamma2 * parts["sup"]
    return (total, parts) if return_parts else total
