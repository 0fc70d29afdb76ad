"""What LUCIR and PODNet share: imprinting new classes, freezing the old classes' rows, the
classification term and its BalancedS-CE / Relaxed replacements (Jodelet et al. CVIU 2022 §3.2, §3.4)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import cil_losses as L

from ..options import number, option

__all__ = ["balanced_classification", "new_class_features", "relaxed_eps_option",
           "trainable_without_old_rows"]


def relaxed_eps_option() -> Any:
    """The ``relaxed_eps`` option of the Relaxed variants (the same flag as bsce-relaxed's)."""
    return option("λ of old classes (default 0.2 % of the mean class count)", number(0.0, optional=True))


def new_class_features(ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the new classes' training images from the network before this phase's training (no
    augmentation), and their labels counted from 0 (the input of weight imprinting)."""
    feats = ctx.extract(ctx.model, ctx.data.new_x, "features")
    return feats, (ctx.data.new_y - ctx.num_old).to(feats.device)


def trainable_without_old_rows(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every parameter except the head blocks of earlier tasks (LUCIR's frozen ``fc1``, PODNet's frozen old
    proxies); the scale of the head trains."""
    old = {id(p) for block in list(model.head.blocks)[:-1] for p in block.parameters()}
    return [p for p in model.parameters() if id(p) not in old]


def balanced_classification(kind: str, ctx: Any, logits: torch.Tensor, target: torch.Tensor,
                            relaxed_eps: float | None = None) -> torch.Tensor:
    """The classification term on scaled logits: ``"ce"``, ``"bsce"`` (``CE(z + log n_c)``, ``n_c`` counted in
    the phase's training data) or ``"relaxed"`` (``λ_c = ε`` for old classes)."""
    if kind == "ce":
        return F.cross_entropy(logits, target)
    if kind == "bsce":
        return L.balanced_softmax_cross_entropy(logits, target, ctx.class_counts, check_targets=False)
    eps = relaxed_eps if relaxed_eps is not None else L.relaxed_eps_default(ctx.dataset_mean_count)
    return L.balanced_softmax_cross_entropy(logits, target, ctx.class_counts, num_old=ctx.num_old, eps=eps,
                                             check_targets=False)
