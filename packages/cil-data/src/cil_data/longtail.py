"""Long-tailed training sets: per-rank image counts and the seeded subsampling that realises them.

Profiles (Cao et al., LDAM, NeurIPS 2019; used by LT-CIL, Liu et al. ECCV 2022, and DGR, He CVPR 2024):

* ``exp``:  ``n_i = ⌊n_max · ρ^(−i/(C−1))⌋`` for ranks ``i = 0..C−1``. Computed as
  ``int(n_max * (1/ρ) ** (i/(C−1)))`` exactly as the reference code, so CIFAR-100-LT with ρ = 100 keeps
  10,847 images: 500, 477, 455, 434, 415, …, 6, 5, 5, 5, 5.
* ``step``: the first ``⌊C/2⌋`` ranks keep ``n_max``, the other ``C − ⌊C/2⌋`` keep ``⌊n_max/ρ⌋``.

The profile runs over a *class ranking* (``ranking[i]`` = the original label of the class at rank
``i``; default identity, i.e. label 0 is the head). The ranking is independent of the incremental class
order, so a shuffled class order mixes head and tail classes within every task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_int, check_labels, check_permutation
from ._grouping import shuffled_class_groups
from ._random import as_generator
from .errors import DataError

__all__ = ["PROFILES", "long_tail_counts", "long_tail_indices"]

PROFILES = ("exp", "step")


def _check_rho(rho: object) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)) or not math.isfinite(rho):
        raise DataError(f"rho (imbalance ratio n_max/n_min) must be a finite number ≥ 1, got {rho!r}")
    if rho < 1:
        raise DataError(f"rho (imbalance ratio n_max/n_min) must be ≥ 1 (1 = balanced), got {rho}")
    return float(rho)


def long_tail_counts(n_max: int, num_classes: int, rho: float, profile: str = "exp") -> list[int]:
    """Images kept per rank: ``counts[i]`` for the class at rank ``i`` (see the module docstring).

    Raises :class:`DataError` if ``ρ < 1``, the profile is unknown, or a rank would keep no image.
    """
    n_max = check_int(n_max, "n_max", 1)
    c = check_int(num_classes, "num_classes", 1)
    rho = _check_rho(rho)
    if profile not in PROFILES:
        raise DataError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if c == 1:
        return [n_max]
    if profile == "exp":
        factor = 1.0 / rho
        counts = [int(n_max * factor ** (i / (c - 1.0))) for i in range(c)]
    else:
        head = c // 2
        counts = [n_max] * head + [int(math.floor(n_max / rho))] * (c - head)
    if counts[-1] < 1:
        first = next(i for i, n in enumerate(counts) if n < 1)
        raise DataError(
            f"rho={rho:g} with n_max={n_max} leaves no image for the classes at ranks {first}..{c - 1} "
            f"({profile} profile); lower rho to at most {n_max} or use more images per class"
        )
    return counts


def long_tail_indices(
    labels: torch.Tensor,
    rho: float,
    profile: str = "exp",
    ranking: Sequence[int] | None = None,
    seed: int | torch.Generator | np.random.Generator = 0,
    n_max: int | None = None,
    *,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Indices (sorted, int64) of a long-tailed subset of a training set with labels ``labels``.

    The class at rank ``i`` (``ranking[i]``, default ``i``) keeps ``long_tail_counts(n_max, C, rho,
    profile)[i]`` of its images, drawn uniformly without replacement with a generator made from ``seed``
    (no global RNG state). ``n_max`` defaults to the smallest class size so that every class can supply
    its count; ``rho == 1`` without ``n_max`` keeps every image. ``num_classes`` defaults to
    ``len(ranking)`` or ``max(labels) + 1``.
    """
    rho = _check_rho(rho)
    labels = check_labels(labels, "labels")
    if num_classes is None:
        num_classes = len(ranking) if ranking is not None else (int(labels.max()) + 1 if labels.numel() else 0)
    c = check_int(num_classes, "num_classes", 1)
    labels = check_labels(labels, "labels", c)
    rank_to_class = check_permutation(ranking, c, "ranking") if ranking is not None else list(range(c))
    available = torch.bincount(labels, minlength=c)
    empty = torch.nonzero(available == 0).flatten().tolist()
    if empty:
        raise DataError(f"labels: class(es) {empty[:10]} have no sample; every one of the {c} classes needs images")
    if rho == 1.0 and n_max is None:
        return torch.arange(labels.numel(), dtype=torch.int64)
    if n_max is None:
        n_max = int(available.min())
    counts = torch.tensor(long_tail_counts(n_max, c, rho, profile), dtype=torch.int64)
    quota = torch.empty(c, dtype=torch.int64)
    quota[torch.tensor(rank_to_class, dtype=torch.int64)] = counts
    short = torch.nonzero(quota > available).flatten().tolist()
    if short:
        k = short[0]
        raise DataError(
            f"class {k} has {int(available[k])} images but its rank asks for {int(quota[k])} (n_max={n_max}); "
            "lower n_max (default: the smallest class size) or choose another ranking"
        )
    order, rank = shuffled_class_groups(labels, c, as_generator(seed))
    keep = order[rank < quota[labels[order]]]
    return torch.sort(keep).values
