"""Memory budgets: per-class (growing) and total (fixed, water filling)."""

from __future__ import annotations

import pytest
import torch

from cil_data import DataError, MemoryBudget


def reference_total(size: int, available: list[int], spread: bool) -> list[int]:
    """Hand out one exemplar at a time, round-robin over the classes that still have samples."""
    q = [0] * len(available)
    if spread:
        left = size
        while left:
            progress = False
            for c, a in enumerate(available):
                if left and q[c] < a:
                    q[c] += 1
                    left -= 1
                    progress = True
            if not progress:
                break
        return q
    # without spreading: the largest level L with sum(min(a, L)) <= size
    level = max(L for L in range(max(available) + 1) if sum(min(a, L) for a in available) <= size)
    return [min(a, level) for a in available]


def test_per_class() -> None:
    b = MemoryBudget.per_class(20)
    assert b.quotas([500, 19, 20, 5]) == [20, 19, 20, 5]


def test_from_options_is_the_one_rule() -> None:
    assert MemoryBudget.from_options(per_class=20, total=None) == MemoryBudget.per_class(20)
    assert MemoryBudget.from_options(per_class=None, total=1000) == MemoryBudget.total(1000)
    assert MemoryBudget.from_options(per_class=0, total=1000) == MemoryBudget.total(1000)
    assert MemoryBudget.from_options(per_class=0, total=None) is None
    assert MemoryBudget.from_options(per_class=None, total=0) is None
    with pytest.raises(DataError, match="not both"):
        MemoryBudget.from_options(per_class=5, total=50)


def test_held_out_per_class() -> None:
    assert MemoryBudget.per_class(20).held_out_per_class(60) == 2  # 10 % of 20
    assert MemoryBudget.per_class(3).held_out_per_class(5) == 1  # at least one
    assert MemoryBudget.total(2000).held_out_per_class(50) == 4  # 10 % of 2000 / 50
    assert MemoryBudget.total(1000).held_out_per_class(4, fraction=0.2) == 50
    with pytest.raises(DataError, match="fraction"):
        MemoryBudget.per_class(20).held_out_per_class(6, 0)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("spread", [True, False])
def test_total_matches_round_robin_reference(seed: int, spread: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    c = int(torch.randint(1, 12, (1,), generator=g))
    available = torch.randint(0, 60, (c,), generator=g).tolist()
    size = int(torch.randint(c, 200, (1,), generator=g))
    got = MemoryBudget.total(size, spread_remainder=spread).quotas(available)
    assert got == reference_total(size, available, spread)
    assert sum(got) <= size and all(0 <= q <= a for q, a in zip(got, available))
    if spread:
        assert sum(got) == min(size, sum(available))


def test_total_examples() -> None:
    assert MemoryBudget.total(2000).quotas([500] * 10) == [200] * 10
    assert MemoryBudget.total(100).quotas([5, 500, 500]) == [5, 48, 47]  # 5 unused by the small class go to others
    assert MemoryBudget.total(100, spread_remainder=False).quotas([500] * 3) == [33, 33, 33]
    assert MemoryBudget.total(10).quotas([1, 2, 3]) == [1, 2, 3]


def test_errors() -> None:
    with pytest.raises(DataError, match="smaller than the 4 classes"):
        MemoryBudget.total(3).quotas([5, 5, 5, 5])
    with pytest.raises(DataError, match="≥ 1"):
        MemoryBudget.per_class(0)
    with pytest.raises(DataError, match="integer"):
        MemoryBudget.total(2.5)
    with pytest.raises(DataError, match="kind"):
        MemoryBudget("growing", 3)
    with pytest.raises(DataError, match="≥ 0"):
        MemoryBudget.per_class(3).quotas([-1])
