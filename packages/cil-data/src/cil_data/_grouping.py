"""Vectorised per-class grouping: rank of every sample within its class, with or without shuffling.

These replace Python loops over classes: one stable sort groups the samples by class, and the rank of
a sample inside its group is its position minus the start of the group.
"""

from __future__ import annotations

import torch

from ._random import randperm

__all__ = ["rank_within_class", "shuffled_class_groups"]


def _group(labels: torch.Tensor, order: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(labels.numel(), device=labels.device) - starts[labels[order]]


def rank_within_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``rank[i]`` = number of samples of class ``labels[i]`` that come before ``i`` (int64, ``[N]``)."""
    order = torch.argsort(labels, stable=True)
    rank = torch.empty_like(labels)
    rank[order] = _group(labels, order, num_classes)
    return rank


def shuffled_class_groups(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices grouped by class (classes ascending) in a random order within each class.

    Returns ``(order, rank)``: ``order`` is a permutation of ``0..N-1`` and ``rank[j]`` is the position of
    ``order[j]`` inside its class group, so ``order[rank < q[labels[order]]]`` draws ``q[c]`` samples of
    every class ``c`` uniformly without replacement.
    """
    perm = randperm(labels.numel(), generator, labels.device)
    order = perm[torch.argsort(labels[perm], stable=True)]
    return order, _group(labels, order, num_classes)
