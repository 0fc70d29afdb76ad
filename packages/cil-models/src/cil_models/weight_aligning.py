"""WA: weight aligning and non-negative weight clipping (Zhao et al., "Maintaining
Discrimination and Fairness in Class Incremental Learning", CVPR 2020; METHODS.md §5).

After a phase's training, the rows ``W_c`` of the new classes are rescaled so that their mean
norm matches the old classes':

    η_c = ‖W_c‖_p,    γ = mean_{c old} η_c / mean_{c new} η_c,    W_c ← γ · W_c  (c new).

Options (and their sources):

* ``p = 2`` (PyCIL, the tutorial; default) or ``p = 1`` (the authors' code).
* ``clamp=True``: ``γ ← min(γ, 1)``, i.e. never enlarge the new rows (the authors' code).
* ``scale_bias``: biases of the new classes are *not* rescaled by default — PyCIL's
  ``weight_align`` and the FACIL-style implementations scale the weight rows only; with
  ``scale_bias=True`` the new biases are multiplied by ``γ`` as well.
* :func:`clip_nonnegative_`: clamp the FC weights to ``>= 0`` after every optimiser step (the
  authors' code; off by default in the recipes).
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import positive_float
from .errors import HeadStateError
from .heads import CosineLinear, IncrementalHead, IncrementalLinear


def _linear_head(head: nn.Module, fn: str) -> IncrementalLinear:
    candidate = getattr(head, "head", head) if not isinstance(head, IncrementalHead) else head
    if isinstance(candidate, CosineLinear):
        raise TypeError(
            f"{fn} needs an IncrementalLinear head; a CosineLinear head normalises its rows, so their "
            "norms do not change its logits"
        )
    if not isinstance(candidate, IncrementalLinear):
        raise TypeError(
            f"head must be an IncrementalLinear (or a network whose .head is one), got {type(head).__name__}"
        )
    return candidate


@torch.no_grad()
def weight_align(
    head: nn.Module, num_old: int, p: float = 2.0, clamp: bool = False, *, scale_bias: bool = False
) -> float:
    """Rescale the rows of classes ``>= num_old`` by ``γ = mean_old ‖W_c‖_p / mean_new ‖W_c‖_p``.

    Args:
        head: an :class:`~cil_models.IncrementalLinear`, or a network whose ``.head`` is one.
        num_old: number of old classes ``C_old`` (``1 <= num_old < num_classes``); usually
            ``head.boundaries[-2]``.
        p: the norm's order (2 by default, 1 as in the authors' code).
        clamp: use ``min(γ, 1)``.
        scale_bias: also multiply the new classes' biases by ``γ``.

    Returns:
        The factor ``γ`` that was applied (after clamping).
    """
    linear = _linear_head(head, "weight_align")
    p = positive_float("p", p)
    num_classes = linear.num_classes
    if isinstance(num_old, bool) or not isinstance(num_old, int):
        raise TypeError(f"num_old must be an int, got {type(num_old).__name__}")
    if not 1 <= num_old < num_classes:
        raise HeadStateError(
            f"num_old must satisfy 1 <= num_old < num_classes = {num_classes} (old and new classes "
            f"both non-empty), got {num_old}"
        )
    norms = linear.weight_norms(p).double()
    mean_new = norms[num_old:].mean()
    gamma = float(norms[:num_old].mean() / mean_new)
    if not (gamma == gamma and gamma != float("inf")):
        raise HeadStateError(
            f"weight aligning is undefined: mean norm of the new rows is {float(mean_new)}, "
            f"of the old rows {float(norms[:num_old].mean())}"
        )
    if clamp:
        gamma = min(gamma, 1.0)
    for block, edge in zip(linear.blocks, linear.boundaries[:-1]):
        start = max(num_old - edge, 0)
        if start >= block.out_features:
            continue
        block.weight[start:].mul_(gamma)
        if scale_bias and block.bias is not None:
            block.bias[start:].mul_(gamma)
    return gamma


@torch.no_grad()
def clip_nonnegative_(head: nn.Module, *, include_bias: bool = False) -> None:
    """Clamp every FC weight to ``>= 0`` in place (WA authors' code, after each optimiser step).

    Args:
        head: an :class:`~cil_models.IncrementalLinear`, or a network whose ``.head`` is one.
        include_bias: clamp the biases too (off: the authors clip the weight matrix only).
    """
    linear = _linear_head(head, "clip_nonnegative_")
    tensors = [block.weight for block in linear.blocks]
    if include_bias and linear.use_bias:
        tensors += [block.bias for block in linear.blocks]
    if tensors:
        torch._foreach_clamp_min_(tensors, 0.0)
