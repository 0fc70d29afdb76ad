"""What DER and FOSTER (and their JIOC versions) share: the classification and
distillation terms JIOC replaces, re-drawing head rows reproducibly, and a class-balanced subset."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

import cil_losses as L

from .icarl import jioc_switches

__all__ = ["classification_term", "distillation_terms", "draw_rows_", "balanced_subset",
           "phase_generator", "head_on"]


def head_on(head: tuple[torch.Tensor, torch.Tensor | None], device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A kept head's ``(weight, bias)`` in float32 on ``device``: the same tensors when they are there already,
    else copies (a resumed run restores them on the CPU; the caller keeps the copies, so they are made once)."""
    weight, bias = head
    return (weight.to(device, torch.float32), None if bias is None else bias.to(device, torch.float32))


def classification_term(options: Any, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``L_IC`` (JIOC input coordination, when ``--jioc both|ic``) or plain CE on ``logits``; with its log name."""
    use_ic, _ = jioc_switches(options)
    if use_ic:
        return L.input_coordination_ce(logits, target, detach_weight=options.jioc_detach,
                                       normalize=options.jioc_normalize, check_targets=False), "ic"
    return F.cross_entropy(logits, target), "ce"


def distillation_terms(options: Any, ctx: Any, logits: torch.Tensor, suppression_logits: torch.Tensor,
                       old_logits: torch.Tensor, is_memory: torch.Tensor, *, kd_if_no_oc: bool
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """JIOC's output coordination: ``γ1·L_OC(z, ẑ) + γ2·L_sup(z')`` when ``--jioc both|oc`` (``L_OC``: one
    softmax per old task over every sample, ``L_sup`` on the memory samples of ``suppression_logits``);
    otherwise the base method's own distillation, ``γ1·KD_T(z[:, :C_old], ẑ)`` (``kd_if_no_oc``, FOSTER; the
    weight γ1 = 1 by default, so ``--jioc none`` is the base method) or nothing (DER has no distillation)."""
    _, use_oc = jioc_switches(options)
    T = options.kd_temperature
    gamma1 = getattr(options, "jioc_gamma1", 1.0)
    zero = logits.new_zeros(())
    if use_oc:
        oc = L.output_coordination_kd(logits, old_logits, ctx.old_boundaries, T)
        sup = L.new_head_suppression(suppression_logits, is_memory, ctx.num_old, squared=options.jioc_squared)
        return gamma1 * oc + options.jioc_gamma2 * sup, {"oc": oc.detach(), "sup": sup.detach()}
    if kd_if_no_oc:
        kd = L.kd_loss(logits[:, : ctx.num_old], old_logits, T)
        return gamma1 * kd, {"kd": kd.detach()}
    return zero, {}


def phase_generator(run: Any, t: int, salt: int) -> torch.Generator:
    """A CPU generator fixed by the run's seed, the phase and ``salt``: a draw made at a stage's start is the
    same in a resumed run as in an uninterrupted one."""
    return torch.Generator().manual_seed(int(run.seed) * 1_000_003 + 7_919 * t + salt)


@torch.no_grad()
def draw_rows_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """Re-draw a linear layer's rows in place as PyCIL's ``SimpleLinear`` (``U(±sqrt(3/fan_in))``), from
    ``generator`` (drawn on the CPU, then copied to the weight's device)."""
    bound = math.sqrt(3.0 / weight.shape[1])
    rows = torch.empty(weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    weight.copy_(rows.to(device=weight.device, dtype=weight.dtype))


def balanced_subset(positions: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The same number of samples of every class present (the smallest class count), drawn at random once
    (DER's ``construct_balanced_subset``); ``labels`` are those of ``positions`` (CPU)."""
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    keep = int(counts.min())
    # a random rank within each class: sort by (label, random key), keep the first `keep` of each class
    keys = torch.rand(len(labels), generator=generator, dtype=torch.float64)
    order = torch.argsort(labels.double() * 2.0 + keys)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, classes)
    rank = torch.arange(len(labels)) - starts[torch.searchsorted(classes, sorted_labels)]
    return positions[order[rank < keep]]
