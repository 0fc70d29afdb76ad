"""Separated softmax cross-entropy of SS-IL (Ahn et al., ICCV 2021; METHODS.md §2)."""

from __future__ import annotations

import torch

from . import _checks
from .errors import LossArgumentError

__all__ = ["separated_softmax_cross_entropy"]


@_checks.renamed_keywords(targets="target", is_replay="is_memory")
def separated_softmax_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_old: int,
    is_memory: torch.Tensor | None,
    reduction: str = "mean",
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """SS-IL separated softmax (Ahn et al., ICCV 2021): each sample's softmax covers only its own group of classes.

    ``L_SS = (1/B) [ Σ_{i new} −log softmax(z_i[num_old:])_{y_i} + Σ_{i memory} −log softmax(z_i[:num_old])_{y_i} ]``

    New samples (``is_memory[i] == False``) normalise over the current phase's classes
    ``[num_old, C)``, replayed memory samples over the old classes ``[0, num_old)``; the sum is divided
    by the whole batch size. Implemented by masking the other group's logits and one cross-entropy call
    (no loop). ``num_old == 0`` is plain cross-entropy.

    Args:
        logits: ``[B, C]``.
        target: ``[B]``; a new sample's target must be in ``[num_old, C)``, a replayed one's in ``[0, num_old)``.
        num_old: number of old classes (``0 ≤ num_old < C``).
        is_memory: ``[B]`` bool, True for replayed memory samples (``None``: all samples are new; before 1.0:
            ``is_replay``).
        reduction: ``"mean"`` (default, sum / B), ``"sum"`` or ``"none"``.
        check_targets: verify that every target lies in its sample's group (one device sync);
            a violation raises ``LossArgumentError`` instead of returning ``inf``. Targets outside ``[0, C)``
            raise it in any case on the CPU.

    Example:
        >>> import torch, cil_losses as L
        >>> z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, 1.0]])
        >>> y = torch.tensor([0, 2])                           # classes 0, 1 old; 2, 3 new
        >>> L.separated_softmax_cross_entropy(z, y, num_old=2, is_memory=torch.tensor([True, False]))
        tensor(0.1642)
    """
    logits = _checks.logits_2d("logits", logits)
    batch, num_classes = logits.shape
    target = _checks.targets_1d("target", target, batch, logits.device)
    how = _checks.reduction(reduction)
    num_old = _checks.class_count("num_old", num_old, num_classes - 1)
    z = _checks.upcast(logits)
    if is_memory is None:
        is_memory = torch.zeros(batch, dtype=torch.bool, device=z.device)
    is_memory = _checks.mask_1d("is_memory", is_memory, batch, z.device)
    if num_old == 0:
        if bool(is_memory.any()):
            raise LossArgumentError("is_memory marks replayed samples but num_old == 0: there are no old classes "
                                    "to replay (pass num_old > 0 or an all-False is_memory)")
        return _checks.cross_entropy(z, target, how, check=check_targets)
    if check_targets:
        outside = (target < 0) | (target >= num_classes)
        if bool((((target < num_old) != is_memory) | outside).any()):
            if bool(outside.any()):
                raise _checks.target_range_error("target", target, num_classes)
            raise LossArgumentError(
                f"target does not match is_memory for num_old={num_old}: new samples need targets in "
                f"[{num_old}, {num_classes}), replayed samples targets in [0, {num_old})"
            )
    return _checks.cross_entropy(_mask_other_group(z, num_old, is_memory), target, how, check=check_targets)


def _mask_other_group(z: torch.Tensor, num_old: int, is_replay: torch.Tensor) -> torch.Tensor:
    """``z`` with each sample's other group of columns pushed to a huge negative value.

    One ``addmm``: ``z + R @ M`` with ``R = [is_replay, ~is_replay]`` (``[B, 2]``) and ``M`` holding
    ``−big`` on the new columns (row 0) and on the old columns (row 1). ``big = finfo.max / 16`` keeps
    everything finite (``0·(−inf)`` would be NaN) while ``exp(z − big − max)`` is exactly 0, so the
    softmax over the kept group is exact and the masked columns get exactly zero gradient.
    """
    num_classes = z.shape[1]
    big = torch.finfo(z.dtype).max / 16
    selector = torch.stack([is_replay, ~is_replay], dim=1).to(z.dtype)
    penalty = torch.zeros(2, num_classes, dtype=z.dtype, device=z.device)
    penalty[0, num_old:] = -big
    penalty[1, :num_old] = -big
    with _checks.autocast_off(z):
        return torch.addmm(z, selector, penalty)
