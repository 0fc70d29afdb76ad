"""Class-incremental scenarios: class orders, phase splits, and the phases of a (long-tailed) data set.

Protocols (METHODS.md §4, DGR / LT-CIL): *shuffled LT* uses the class order of
``numpy.random.seed(1993); numpy.random.permutation(C)`` so tasks mix head and tail classes; *ordered
LT* uses the ranking order (head first). *LFS* splits the classes into equal phases; *LFH* starts with a
large base phase (e.g. 50 of 100 classes) followed by equal steps.

Labels: the data set keeps its *original* labels; a scenario maps them to *incremental* labels, the
position of the class in the class order, so phase ``t`` owns the contiguous incremental labels
``boundaries[t]..boundaries[t+1]-1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ._checks import as_index_tensor, check_int, check_labels, check_permutation
from .errors import DataError

__all__ = ["ORDER_KINDS", "IncrementalScenario", "Phase", "class_order", "phase_increments", "seed1993_order"]

ORDER_KINDS = ("seed1993", "ordered", "tail-first", "random")


def seed1993_order(num_classes: int) -> list[int]:
    """The class order of iCaRL / PODNet / DGR: ``numpy.random.seed(1993); numpy.random.permutation(C)``.

    Computed with a private ``numpy.random.RandomState(1993)``, which draws the same permutation without
    touching numpy's global random state.
    """
    return [int(v) for v in np.random.RandomState(1993).permutation(check_int(num_classes, "num_classes", 1))]


def class_order(
    kind: str | Sequence[int],
    num_classes: int,
    ranking: Sequence[int] | None = None,
    *,
    seed: int | None = None,
) -> list[int]:
    """The incremental class order: ``order[k]`` is the original label of incremental class ``k``.

    ``kind``:
      * ``"seed1993"``: the seed-1993 numpy permutation (shuffled LT; ``ranking`` is not used);
      * ``"ordered"``: the ranking order, head first (identity when ``ranking`` is None; ordered LT);
      * ``"tail-first"``: the ranking reversed (tail classes first);
      * ``"random"``: a permutation from ``numpy.random.default_rng(seed)`` (``seed`` required);
      * a sequence: an explicit order, validated to be a permutation of ``0..C-1``.
    """
    c = check_int(num_classes, "num_classes", 1)
    ranked = check_permutation(ranking, c, "ranking") if ranking is not None else list(range(c))
    if isinstance(kind, str):
        if kind == "seed1993":
            return seed1993_order(c)
        if kind == "ordered":
            return ranked
        if kind == "tail-first":
            return ranked[::-1]
        if kind == "random":
            if seed is None:
                raise DataError('class_order("random") needs seed=<int> so that the order is reproducible')
            return [int(v) for v in np.random.default_rng(check_int(seed, "seed", 0)).permutation(c)]
        raise DataError(f"class order kind {kind!r} is unknown: choose one of {', '.join(ORDER_KINDS)} or give a list")
    return check_permutation(kind, c, "order")


def phase_increments(
    num_classes: int,
    num_phases: int | None = None,
    base_classes: int | None = None,
    increments: Sequence[int] | None = None,
    *,
    num_steps: int | None = None,
) -> list[int]:
    """Classes per phase.

    * ``increments``: explicit (every entry ≥ 1, sum = ``num_classes``); nothing else may be given.
    * LFS, ``num_phases`` alone: ``num_phases`` equal phases (``num_phases`` must divide ``num_classes``).
    * LFH, ``base_classes`` with either ``num_phases`` = the **total** number of phases including the
      base phase, or ``num_steps`` = the number of incremental steps after it
      (``num_steps = num_phases − 1``). "B50 with 5 steps" on 100 classes is
      ``phase_increments(100, base_classes=50, num_steps=5)`` = ``phase_increments(100, 6, 50)``
      = ``[50, 10, 10, 10, 10, 10]``. The remaining classes must split equally over the steps.
    """
    c = check_int(num_classes, "num_classes", 1)
    if increments is not None:
        if num_phases is not None or base_classes is not None or num_steps is not None:
            raise DataError("increments fixes every phase: do not also give num_phases, num_steps or base_classes")
        if isinstance(increments, (str, bytes)) or not isinstance(increments, (Sequence, np.ndarray)):
            raise DataError(f"increments must be a sequence of class counts, got {increments!r}")
        inc = [check_int(v, f"increments[{i}]", 1) for i, v in enumerate(increments)]
        if not inc or sum(inc) != c:
            raise DataError(f"increments {inc} sum to {sum(inc)}, but there are {c} classes: they must sum to {c}")
        return inc
    if num_steps is not None:
        if base_classes is None:
            raise DataError("num_steps counts the steps after a base phase: give base_classes too (or num_phases alone)")
        if num_phases is not None:
            raise DataError("give either num_phases (total, base phase included) or num_steps (after the base), not both")
        num_phases = check_int(num_steps, "num_steps", 0) + 1
    if num_phases is None:
        raise DataError("give num_phases (equal splits), base_classes with num_phases/num_steps, or explicit increments")
    p = check_int(num_phases, "num_phases", 1)
    if base_classes is None:
        if c % p:
            raise DataError(f"num_phases={p} does not divide the {c} classes; choose a divisor of {c} or give increments")
        return [c // p] * p
    b = check_int(base_classes, "base_classes", 1)
    if b > c:
        raise DataError(f"base_classes={b} exceeds the {c} classes")
    steps = p - 1
    rest = c - b
    if steps == 0:
        if rest:
            raise DataError(f"base_classes={b} with a single phase leaves {rest} classes unassigned; add steps")
        return [b]
    if rest == 0 or rest % steps:
        raise DataError(
            f"the {rest} classes after base_classes={b} cannot be split equally over {steps} steps "
            f"(num_phases={p} counts the base phase); choose a step count that divides {rest} or give increments"
        )
    return [b] + [rest // steps] * steps


class LabelledSplits(Protocol):
    """What a scenario needs from a data set: labels of both splits and the number of classes (and, for
    :meth:`IncrementalScenario.train_data` / ``test_data``, an ``images(split, indices)`` method)."""

    train_labels: torch.Tensor
    test_labels: torch.Tensor

    @property
    def num_classes(self) -> int: ...


@dataclass(frozen=True, eq=False)
class Phase:
    """One phase of a scenario (incremental labels; indices into the data set's original splits).

    Attributes:
        index: phase number ``t`` (0 = base phase).
        num_old, num_new, num_seen: classes learned before, arriving now, and their sum.
        classes: the incremental labels of the new classes, ``range(num_old, num_seen)``.
        train_indices: indices into ``dataset.train_*`` of the new classes' training samples (after
            the long tail), ascending.
        test_indices: indices into ``dataset.test_*`` of the test samples of every class seen so far.
        train_counts: original (pre-memory, after the long tail) training counts ``N_c`` of the seen
            classes, int64 ``[num_seen]`` in incremental order.
    """

    index: int
    num_old: int
    num_new: int
    num_seen: int
    classes: range
    train_indices: torch.Tensor
    test_indices: torch.Tensor
    train_counts: torch.Tensor

    def __repr__(self) -> str:
        return (
            f"Phase({self.index}, classes {self.num_old}..{self.num_seen - 1}, train={self.train_indices.numel()}, "
            f"test={self.test_indices.numel()})"
        )


class IncrementalScenario:
    """A data set split into phases by a class order and per-phase class counts.

    Args:
        dataset: an :class:`~cil_data.ImageDataset` (or anything with ``train_labels``, ``test_labels``
            and ``num_classes``, e.g. a lazy image folder).
        order: ``order[k]`` = original label of incremental class ``k`` (see :func:`class_order`).
        increments: classes per phase (see :func:`phase_increments`).
        train_indices: the training subset to use (e.g. :func:`~cil_data.long_tail_indices`); None = all.
    """

    def __init__(
        self,
        dataset: LabelledSplits,
        order: Sequence[int],
        increments: Sequence[int],
        train_indices: torch.Tensor | None = None,
    ) -> None:
        c = check_int(dataset.num_classes, "dataset.num_classes", 1)
        self.dataset = dataset
        self.class_order: list[int] = check_permutation(order, c, "order")
        self.increments: list[int] = phase_increments(c, increments=increments)
        self.boundaries: list[int] = [0, *np.cumsum(self.increments).tolist()]
        self._to_incremental = torch.empty(c, dtype=torch.int64)
        self._to_incremental[torch.tensor(self.class_order)] = torch.arange(c)
        train_labels = check_labels(dataset.train_labels, "dataset.train_labels", c)
        test_labels = check_labels(dataset.test_labels, "dataset.test_labels", c)
        if train_indices is None:
            train_indices = torch.arange(train_labels.numel())
        self.train_indices = torch.sort(as_index_tensor(train_indices, train_labels.numel(), "train_indices")).values
        inc_train = self._to_incremental[train_labels[self.train_indices]]
        self.train_counts: torch.Tensor = torch.bincount(inc_train, minlength=c)
        empty = torch.nonzero(self.train_counts == 0).flatten()
        if empty.numel():
            shown = ", ".join(f"{k} (original label {self.class_order[k]})" for k in empty[:5].tolist())
            raise DataError(f"incremental class(es) {shown} have no training sample in train_indices; every class needs one")
        inner = torch.tensor(self.boundaries[1:-1], dtype=torch.int64)
        self._train_phase = torch.bucketize(inc_train, inner, right=True)
        self._test_incremental = self._to_incremental[test_labels]

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def num_phases(self) -> int:
        return len(self.increments)

    def to_incremental(self, labels: torch.Tensor) -> torch.Tensor:
        """Original labels → incremental labels (position in the class order), same device."""
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DataError(f"labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
        return self._to_incremental.to(labels.device)[labels]

    def to_original(self, labels: torch.Tensor) -> torch.Tensor:
        """Incremental labels → original labels, same device."""
        return torch.tensor(self.class_order, device=labels.device)[labels.to(torch.int64)]

    def phase(self, t: int) -> Phase:
        t = check_int(t, "phase index", 0)
        if t >= self.num_phases:
            raise DataError(f"phase index {t} is out of range: this scenario has phases 0..{self.num_phases - 1}")
        lo, hi = self.boundaries[t], self.boundaries[t + 1]
        return Phase(
            index=t,
            num_old=lo,
            num_new=hi - lo,
            num_seen=hi,
            classes=range(lo, hi),
            train_indices=self.train_indices[self._train_phase == t],
            test_indices=torch.nonzero(self._test_incremental < hi).flatten(),
            train_counts=self.train_counts[:hi].clone(),
        )

    def __iter__(self) -> Iterator[Phase]:
        return (self.phase(t) for t in range(self.num_phases))

    def __len__(self) -> int:
        return self.num_phases

    def train_data(self, t: int | Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and *incremental* labels of phase ``t``'s new training samples, in the order of
        ``phase.train_indices`` (an image folder decodes just these)."""
        phase = t if isinstance(t, Phase) else self.phase(t)
        idx = phase.train_indices
        labels = self._to_incremental[self.dataset.train_labels.to("cpu", torch.int64)[idx]]
        return self._images("train", idx), labels

    def test_data(self, t: int | Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and *incremental* labels of the test samples of every class seen by phase ``t``."""
        phase = t if isinstance(t, Phase) else self.phase(t)
        idx = phase.test_indices
        return self._images("test", idx), self._test_incremental[idx]

    def _images(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        read = getattr(self.dataset, "images", None)
        if read is None:
            raise DataError(
                f"{type(self.dataset).__name__} has no images(split, indices) method; the scenario can give its "
                "phases' indices only (phase.train_indices, phase.test_indices)"
            )
        return read(split, indices)

    def __repr__(self) -> str:
        return f"IncrementalScenario(classes={self.num_classes}, increments={self.increments}, train={self.train_indices.numel()})"
