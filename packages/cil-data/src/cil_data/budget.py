"""Exemplar-memory budgets: how many exemplars every seen class may keep.

* ``per_class(m)`` — growing memory (iCaRL/LUCIR protocol of the LT-CIL papers): every class keeps
  ``min(m, available_c)``; a class with fewer than ``m`` samples keeps them all.
* ``total(M)`` — fixed memory of ``M`` exemplars split equally over the seen classes. Quota that a small
  class cannot use goes to the others ("water filling"): every class gets ``min(available_c, L)`` for the
  largest level ``L`` that fits, and, with ``spread_remainder`` (default), the ``r < #{c: available_c > L}``
  exemplars left over go one each to the first such classes (lowest incremental label first), so the
  whole budget is used. With ``spread_remainder=False`` the remainder stays unused (PyCIL's
  ``M // C`` per class when no class is small).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._checks import check_int
from .errors import DataError

__all__ = ["MemoryBudget"]

KINDS = ("per_class", "total")


@dataclass(frozen=True)
class MemoryBudget:
    """A memory budget; build it with :meth:`per_class` or :meth:`total`."""

    kind: str
    size: int
    spread_remainder: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"memory budget kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        check_int(self.size, f"memory budget {self.kind}", 1)

    @classmethod
    def per_class(cls, m: int) -> "MemoryBudget":
        """``m`` exemplars per class (the memory grows with the number of classes)."""
        return cls("per_class", check_int(m, "exemplars per class", 1))

    @classmethod
    def total(cls, m: int, *, spread_remainder: bool = True) -> "MemoryBudget":
        """``m`` exemplars in all, split equally over the seen classes."""
        return cls("total", check_int(m, "total memory size", 1), bool(spread_remainder))

    def quotas(self, available: Sequence[int] | torch.Tensor) -> list[int]:
        """Exemplars per class given the samples ``available`` per class (old classes: what the memory
        holds now; new classes: their training samples). Raises :class:`DataError` if a total budget is
        smaller than the number of classes."""
        a = torch.as_tensor(available, dtype=torch.int64).flatten().cpu()
        if a.numel() and int(a.min()) < 0:
            raise DataError(f"available counts must be ≥ 0, got {a.tolist()}")
        if self.kind == "per_class":
            return torch.clamp(a, max=self.size).tolist()
        c = a.numel()
        if c > self.size:
            raise DataError(
                f"memory budget total={self.size} is smaller than the {c} classes: every class needs at least one "
                f"exemplar; use a budget ≥ {c} (or MemoryBudget.per_class)"
            )
        if int(a.sum()) <= self.size:
            return a.tolist()
        lo, hi = 0, int(a.max())  # sum(min(a, lo)) <= size < sum(min(a, hi))
        while hi - lo > 1:  # binary search on the level (about log2(max) vector steps)
            mid = (lo + hi) // 2
            if int(torch.clamp(a, max=mid).sum()) <= self.size:
                lo = mid
            else:
                hi = mid
        q = torch.clamp(a, max=lo)
        if self.spread_remainder:
            remainder = self.size - int(q.sum())
            room = a > lo
            q = q + (room & (torch.cumsum(room.to(torch.int64), 0) <= remainder)).to(torch.int64)
        return q.tolist()

    @classmethod
    def from_options(cls, *, per_class: int | None, total: int | None) -> "MemoryBudget | None":
        """The one rule that turns the two memory options into a budget (None: no memory).

        ``total`` (a fixed memory) and ``per_class`` (a growing one) are exclusive: giving both, each ≥ 1, is
        an error. ``0`` or ``None`` means "not this kind"; both absent or zero means no memory.
        """
        if per_class and total:
            raise DataError(
                f"a memory is either growing (per_class={per_class}) or fixed (total={total}), not both: give one"
            )
        if total:
            return cls.total(total)
        if per_class:
            return cls.per_class(per_class)
        return None

    def per_class_share(self, num_seen: int) -> float:
        """Exemplars one class may keep on average with ``num_seen`` classes: ``m`` (growing) or ``M / C``."""
        c = check_int(num_seen, "num_seen", 1)
        return float(self.size) if self.kind == "per_class" else self.size / c

    def held_out_per_class(self, num_seen: int, fraction: float = 0.1) -> int:
        """Samples per seen class held out as a class-balanced validation set (Meta BalancedS-CE's ``B_t``,
        BiC's validation split): ``max(1, round(fraction · per-class share))`` — 2 with 20 exemplars per class."""
        if not 0 < fraction <= 1:
            raise DataError(f"fraction must lie in (0, 1], got {fraction}")
        return max(1, int(round(fraction * self.per_class_share(num_seen))))

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "size": self.size, "spread_remainder": self.spread_remainder}
