"""Vectorised herding against a plain per-sample reference (float64, several seeds)."""

from __future__ import annotations

import pytest
import torch

from cil_data import DataError, herding_order, herding_select


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "d", "k"), [(30, 8, 10), (12, 3, 12), (25, 16, 40), (1, 4, 3)])
def test_herding_order_matches_reference(seed: int, n: int, d: int, k: int, reference_herding) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64) * 5
    got = herding_order(x, k)
    assert got.dtype == torch.int64
    assert got.tolist() == reference_herding(x, k)


def test_herding_prefix_property_and_scale_invariance() -> None:
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = herding_order(x, 40)
    assert sorted(full.tolist()) == list(range(40))
    assert herding_order(x, 7).tolist() == full[:7].tolist()
    # per-sample positive scaling does not change the normalised features
    scale = torch.rand(40, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    assert herding_order(x * scale, 10).tolist() == full[:10].tolist()
    # the mean of the first k chosen approaches the class mean better than a random subset on average
    f = x / x.norm(dim=1, keepdim=True)
    herd_err = (f[full[:10]].mean(0) - f.mean(0)).norm()
    rand_err = torch.stack([(f[torch.randperm(40, generator=torch.Generator().manual_seed(s))[:10]].mean(0) - f.mean(0)).norm() for s in range(20)])
    assert herd_err < rand_err.mean()


@pytest.mark.parametrize("seed", range(3))
def test_herding_select_equals_per_class_reference(seed: int, reference_herding) -> None:
    g = torch.Generator().manual_seed(seed)
    counts = [7, 1, 15, 4, 0, 9]
    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=g)]
    x = torch.randn(len(labels), 5, generator=g, dtype=torch.float64)
    quotas = torch.tensor([3, 5, 20, 0, 2, 9])
    got = herding_select(x, labels, quotas)
    expected: list[int] = []
    for c, q in enumerate(quotas.tolist()):
        members = torch.nonzero(labels == c).flatten()
        if len(members) and q:
            expected += members[torch.tensor(reference_herding(x[members], q))].tolist()
    assert got.tolist() == expected


def test_herding_select_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import cil_data.herding as herding

    g = torch.Generator().manual_seed(4)
    labels = torch.arange(5).repeat_interleave(6)
    x = torch.randn(30, 3, generator=g)
    whole = herding_select(x, labels, torch.full((5,), 4))
    monkeypatch.setattr(herding, "_CHUNK_ELEMENTS", 20)  # one class per chunk
    assert herding_select(x, labels, torch.full((5,), 4)).tolist() == whole.tolist()


def test_herding_handles_zero_and_low_precision_features() -> None:
    x = torch.zeros(5, 3)
    assert sorted(herding_order(x, 5).tolist()) == list(range(5))
    y = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    assert herding_order(y.to(torch.bfloat16), 5).numel() == 5
    assert herding_order(y, 0).numel() == 0


def test_herding_errors() -> None:
    with pytest.raises(DataError, match=r"\[N, d\]"):
        herding_order(torch.zeros(3), 1)
    with pytest.raises(DataError, match="floating point"):
        herding_order(torch.zeros(3, 2, dtype=torch.int64), 1)
    with pytest.raises(DataError, match="NaN"):
        herding_order(torch.tensor([[float("nan"), 0.0]]), 1)
    with pytest.raises(DataError, match="out of range"):
        herding_select(torch.zeros(2, 2), torch.tensor([0, 3]), torch.tensor([1, 1]))
    with pytest.raises(DataError, match="rows"):
        herding_select(torch.zeros(3, 2), torch.tensor([0, 1]), torch.tensor([1, 1]))
