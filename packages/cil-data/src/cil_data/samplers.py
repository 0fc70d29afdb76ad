"""Index samplers: SS-IL ratio-preserving batches, class-balanced sampling, balanced validation splits.

All randomness comes from an explicit ``torch.Generator`` (or an int seed), never from global state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import check_int, check_labels
from ._grouping import shuffled_class_groups
from ._random import as_generator, randperm
from .errors import DataError

__all__ = ["RatioPreservingSampler", "ValidationSplit", "balanced_validation_split", "class_balanced_indices",
           "validation_split_at_most"]


class RatioPreservingSampler:
    """Ratio-preserving (RP) batches of SS-IL (Ahn et al., ICCV 2021).

    Every step yields ``(new_idx, mem_idx)``: ``batch_new`` indices into the new data, drawn without
    replacement (an epoch is one pass over the new data, reshuffled each epoch), and ``batch_memory``
    indices into the memory from a separate stream that is *cycled*: a shuffled pass over the memory,
    reshuffled and restarted whenever it runs out, so it never runs out (also across epochs).
    With an empty memory (phase 0) ``mem_idx`` is empty.

    Args:
        num_new, num_memory: sizes of the new data and of the memory.
        batch_new, batch_memory: ``B_n`` (default 128) and ``B_r`` (default 32).
        generator: torch generator or int seed (default: seed 0). :meth:`state_dict` holds where the
            epoch and the memory cycle stand, plus the generator's state when the sampler made the
            generator itself (int seed / None); a passed ``torch.Generator`` belongs to the caller, who
            checkpoints its state. Either way ``load_state_dict`` resumes exactly (also mid-epoch).
        drop_last: drop a last, smaller new-data batch.
    """

    def __init__(
        self,
        num_new: int,
        num_memory: int,
        batch_new: int = 128,
        batch_memory: int = 32,
        generator: torch.Generator | int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.num_new = check_int(num_new, "num_new", 1)
        self.num_memory = check_int(num_memory, "num_memory", 0)
        self.batch_new = check_int(batch_new, "batch_new", 1)
        self.batch_memory = check_int(batch_memory, "batch_memory", 0)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.num_new < self.batch_new:
            raise DataError(f"drop_last with num_new={self.num_new} < batch_new={self.batch_new} gives no batch at all")
        self._owns_generator = not isinstance(generator, torch.Generator)
        self.generator = as_generator(0 if generator is None else generator, "generator")
        self._memory_perm = torch.empty(0, dtype=torch.int64)
        self._memory_pos = 0
        self._epoch_perm: torch.Tensor | None = None  # set while an epoch is under way
        self._epoch_batch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_new // self.batch_new
        return math.ceil(self.num_new / self.batch_new)

    def _memory_batch(self) -> torch.Tensor:
        if self.num_memory == 0 or self.batch_memory == 0:
            return torch.empty(0, dtype=torch.int64)
        parts, need = [], self.batch_memory
        while need:  # wraps at most ceil(batch_memory / num_memory) times
            if self._memory_pos >= self._memory_perm.numel():
                self._memory_perm = randperm(self.num_memory, self.generator)
                self._memory_pos = 0
            part = self._memory_perm[self._memory_pos : self._memory_pos + need]
            self._memory_pos += part.numel()
            need -= part.numel()
            parts.append(part)
        return torch.cat(parts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._epoch_perm is None:
            self._epoch_perm = randperm(self.num_new, self.generator)
            self._epoch_batch = 0
        while self._epoch_batch < len(self):
            lo = self._epoch_batch * self.batch_new
            new_idx = self._epoch_perm[lo : lo + self.batch_new]
            mem_idx = self._memory_batch()
            self._epoch_batch += 1
            yield new_idx, mem_idx
        self._epoch_perm = None

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch and the memory cycle stand (tensors are copied)."""
        return {
            "num_new": self.num_new,
            "num_memory": self.num_memory,
            "memory_perm": self._memory_perm.clone(),
            "memory_pos": self._memory_pos,
            "epoch_perm": None if self._epoch_perm is None else self._epoch_perm.clone(),
            "epoch_batch": self._epoch_batch,
            "generator": self.generator.get_state() if self._owns_generator else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the data sizes must match)."""
        if state.get("num_new") != self.num_new or state.get("num_memory") != self.num_memory:
            raise DataError(
                f"sampler state is for num_new={state.get('num_new')}, num_memory={state.get('num_memory')}, "
                f"this sampler has num_new={self.num_new}, num_memory={self.num_memory}"
            )
        self._memory_perm = state["memory_perm"].clone()
        self._memory_pos = int(state["memory_pos"])
        self._epoch_perm = None if state["epoch_perm"] is None else state["epoch_perm"].clone()
        self._epoch_batch = int(state["epoch_batch"])
        if self._owns_generator and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def class_balanced_indices(
    labels: torch.Tensor, num_samples: int, generator: torch.Generator | int | np.random.Generator
) -> torch.Tensor:
    """``num_samples`` indices drawn with replacement so that every class present in ``labels`` is
    equally likely: a class uniformly at random, then one of its samples uniformly at random."""
    labels = check_labels(labels, "labels")
    n = check_int(num_samples, "num_samples", 0)
    if labels.numel() == 0:
        raise DataError("labels is empty: class-balanced sampling needs at least one sample")
    gen = as_generator(generator, "generator")
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)
    present = torch.nonzero(counts).flatten()
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    u = torch.rand(2, n, generator=gen, device=gen.device, dtype=torch.float64).cpu()
    cls = present[(u[0] * present.numel()).long().clamp(max=present.numel() - 1)]
    within = (u[1] * counts[cls]).long().clamp(max=counts[cls] - 1)
    return order[starts[cls] + within]


@dataclass(frozen=True)
class ValidationSplit:
    """The result of :func:`validation_split_at_most`.

    ``train``, ``val``: sorted sample indices. ``held_out``: validation samples per class (int64,
    ``[max label + 1]``). ``reduced``: ``{class: samples held out}`` for every present class that had too
    few samples for the requested share (``min(per_class, n_c - 1)``: a class with one sample keeps it for
    training and has no validation sample)."""

    train: torch.Tensor
    val: torch.Tensor
    held_out: torch.Tensor
    reduced: dict[int, int]

    def describe(self, per_class: int) -> str:
        """One line naming the classes that got fewer than ``per_class`` validation samples ('' if none)."""
        if not self.reduced:
            return ""
        by_count: dict[int, list[int]] = {}
        for c, k in sorted(self.reduced.items()):
            by_count.setdefault(k, []).append(c)
        parts = []
        for k, classes in sorted(by_count.items()):
            shown = ", ".join(map(str, classes[:8])) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
            parts.append(f"{k} for class{'es' if len(classes) > 1 else ''} {shown}")
        return (f"held-out validation: {per_class} per class requested, but some classes have too few samples to "
                f"keep one for training; held out {'; '.join(parts)}")


def validation_split_at_most(
    labels: torch.Tensor, per_class: int, generator: torch.Generator | int | np.random.Generator
) -> ValidationSplit:
    """Hold out ``min(per_class, n_c - 1)`` random samples of every class ``c`` present in ``labels``.

    Every class keeps at least one training sample, so the split never fails on a long tail whose
    rarest classes have one or two samples; the classes that got fewer than ``per_class`` are reported
    in :attr:`ValidationSplit.reduced`. With enough samples in every class the draw is identical to
    :func:`balanced_validation_split` with the same generator state.
    """
    labels = check_labels(labels, "labels")
    k = check_int(per_class, "per_class", 1)
    if labels.numel() == 0:
        raise DataError("labels is empty: nothing to split")
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)
    quota = torch.clamp(counts - 1, min=0).clamp(max=k)
    order, rank = shuffled_class_groups(labels, num_classes, as_generator(generator, "generator"))
    is_val = rank < quota[labels[order]]
    reduced = {int(c): int(quota[c]) for c in torch.nonzero((counts > 0) & (quota < k)).flatten()}
    return ValidationSplit(torch.sort(order[~is_val]).values, torch.sort(order[is_val]).values, quota, reduced)


def balanced_validation_split(
    labels: torch.Tensor, per_class: int, generator: torch.Generator | int | np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into ``(train, val)`` with exactly ``per_class`` validation samples of every
    class present in ``labels``, drawn at random (Meta BalancedS-CE's class-balanced set ``B_t``).

    Both index tensors are sorted. Every class must keep at least one training sample, i.e. have more
    than ``per_class`` samples; otherwise a :class:`DataError` names it (:func:`validation_split_at_most`
    holds out fewer samples of such classes instead).
    """
    labels = check_labels(labels, "labels")
    k = check_int(per_class, "per_class", 1)
    if labels.numel() == 0:
        raise DataError("labels is empty: nothing to split")
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)
    short = torch.nonzero((counts > 0) & (counts <= k)).flatten()
    if short.numel():
        c = int(short[0])
        raise DataError(
            f"class {c} has {int(counts[c])} samples, so {k} validation samples per class would leave it none for "
            f"training; use per_class ≤ {int(counts[counts > 0].min()) - 1}"
        )
    split = validation_split_at_most(labels, k, generator)
    return split.train, split.val
