"""Separated softmax cross-entropy of SS-IL (Ahn et al., ICCV 2021; METHODS.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks
from .errors import LossArgumentError

__all__ = ["separated_softmax_cross_entropy"]


def separated_softmax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_old: int,
    is_replay: torch.Tensor | None,
    reduction: str = "mean",
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """SS-IL separated softmax: each sample's softmax covers only its own group of classes.

    ``L_SS = (1/B) [ Σ_{i new} −log softmax(z_i[num_old:])_{y_i} + Σ_{i replay} −log softmax(z_i[:num_old])_{y_i} ]``

    New samples (``is_replay[i] == False``) normalise over the current phase's classes
    ``[num_old, C)``, replayed memory samples over the old classes ``[0, num_old)``; the sum is divided
    by the whole batch size. Implemented by masking the other group's logits to ``-inf`` and one
    cross-entropy call (no loop). ``num_old == 0`` is plain cross-entropy.

    Args:
        logits: ``[B, C]``.
        targets: ``[B]``; a new sample's target must be ``≥ num_old``, a replayed one's ``< num_old``.
        num_old: number of old classes (``0 ≤ num_old < C``).
        is_replay: ``[B]`` bool, True for memory samples (``None``: all samples are new).
        reduction: ``"mean"`` (default, sum / B), ``"sum"`` or ``"none"``.
        check_targets: verify that every target lies in its sample's group (one device sync);
            a violation raises ``LossArgumentError`` instead of returning ``inf``.
    """
    logits = _checks.logits_2d("logits", logits)
    batch, num_classes = logits.shape
    targets = _checks.targets_1d("targets", targets, batch)
    how = _checks.reduction(reduction)
    num_old = _checks.class_count("num_old", num_old, num_classes - 1)
    z = _checks.upcast(logits)
    if is_replay is None:
        is_replay = torch.zeros(batch, dtype=torch.bool, device=z.device)
    is_replay = _checks.mask_1d("is_replay", is_replay, batch, z.device)
    if num_old == 0:
        if bool(is_replay.any()):
            raise LossArgumentError("is_replay marks replayed samples but num_old == 0: there are no old classes "
                                    "to replay (pass num_old > 0 or an all-False is_replay)")
        return F.cross_entropy(z, targets, reduction=how)
    if check_targets:
        target_is_old = targets.to(z.device) < num_old
        if bool((target_is_old != is_replay).any()):
            raise LossArgumentError(
                f"targets do not match is_replay for num_old={num_old}: new samples need targets in "
                f"[{num_old}, {num_classes}), replayed samples targets in [0, {num_old})"
            )
    return F.cross_entropy(_mask_other_group(z, num_old, is_replay), targets, reduction=how)


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
