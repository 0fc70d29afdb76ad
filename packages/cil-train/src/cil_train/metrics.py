"""Metrics of class-incremental learning (METHODS.md §6).

All functions take predicted and true *incremental* labels (class ``k`` = the ``k``-th class of the
class order) as int64 tensors and return plain Python numbers (accuracies in percent).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "SHOT_BINS", "accuracy", "average_incremental_accuracy", "confusion_matrix", "forgetting", "imbalance_score",
    "old_new_accuracy", "shot_accuracy", "task_accuracies",
]

# many / medium / few-shot bins of the original training count (Liu et al. 2019, as used by LT-CIL papers)
SHOT_BINS = {"many": (101, None), "medium": (20, 100), "few": (0, 19)}


def _pct(correct: torch.Tensor) -> float | None:
    return None if correct.numel() == 0 else float(correct.double().mean() * 100.0)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """Top-1 accuracy in percent (None for an empty set)."""
    return _pct(pred == target)


def task_accuracies(pred: torch.Tensor, target: torch.Tensor, boundaries: Sequence[int]) -> list[float | None]:
    """Accuracy on the test samples of each task ``s`` (classes ``boundaries[s]..boundaries[s+1]-1``):
    one row ``A[t][·]`` of the accuracy matrix. Predictions over all seen classes count (a sample of task
    ``s`` predicted as a class of another task is wrong)."""
    b = torch.as_tensor(list(boundaries), dtype=torch.int64, device=target.device)
    task = torch.bucketize(target, b[1:], right=True)
    correct = (pred == target).double()
    n = len(boundaries) - 1
    hits = torch.zeros(n, dtype=torch.float64, device=target.device).index_add_(0, task, correct)
    count = torch.bincount(task, minlength=n).double()
    return [None if c == 0 else float(h / c * 100.0) for h, c in zip(hits.tolist(), count.tolist())]


def old_new_accuracy(pred: torch.Tensor, target: torch.Tensor, num_old: int) -> tuple[float | None, float | None]:
    """Accuracy on the old classes (``< num_old``) and on the new ones."""
    old = target < num_old
    return _pct(pred[old] == target[old]), _pct(pred[~old] == target[~old])


def imbalance_score(pred: torch.Tensor, target: torch.Tensor, num_old: int) -> float | None:
    """SS-IL (Ahn et al. 2021) score ``(e(p,n) + e(n,p)) / 2`` in percent: ``e(p,n)`` is the share of
    old-class test samples predicted as a new class, ``e(n,p)`` the share of new-class samples predicted as an
    old class. None in the first phase (no old classes)."""
    if num_old == 0:
        return None
    old = target < num_old
    if not bool(old.any()) or bool(old.all()):
        return None
    e_pn = float((pred[old] >= num_old).double().mean())
    e_np = float((pred[~old] < num_old).double().mean())
    return (e_pn + e_np) / 2.0 * 100.0


def shot_accuracy(pred: torch.Tensor, target: torch.Tensor, train_counts: torch.Tensor) -> dict[str, float | None]:
    """Accuracy on many-shot (original train count > 100), medium (20–100) and few-shot (< 20) classes."""
    counts = train_counts.to(target.device)[target]
    out: dict[str, float | None] = {}
    for name, (lo, hi) in SHOT_BINS.items():
        sel = counts >= lo if hi is None else (counts >= lo) & (counts <= hi)
        out[name] = _pct(pred[sel] == target[sel])
    return out


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``M[i, j]`` = number of test samples of class ``i`` predicted as ``j`` (int64)."""
    flat = target.to(torch.int64) * num_classes + pred.to(torch.int64)
    return torch.bincount(flat.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def average_incremental_accuracy(acc_per_phase: Sequence[float]) -> float:
    """Mean of the accuracies after each phase, the first (base) phase included (Rebuffi et al. 2017)."""
    return float(sum(acc_per_phase) / len(acc_per_phase))


def forgetting(acc_matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Average forgetting (Chaudhry et al. 2018): for every task but the last, the best accuracy it had
    after any earlier phase minus its accuracy after the last phase; averaged over those tasks.
    ``acc_matrix[t][s]`` is the accuracy on task ``s`` after phase ``t`` (None where ``s > t``)."""
    last = len(acc_matrix) - 1
    if last < 1:
        return None
    drops = []
    for s in range(last):
        earlier = [acc_matrix[t][s] for t in range(s, last) if acc_matrix[t][s] is not None]
        final = acc_matrix[last][s]
        if earlier and final is not None:
            drops.append(max(earlier) - final)
    return float(sum(drops) / len(drops)) if drops else None
