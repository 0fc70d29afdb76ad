"""Long-tail profiles and the seeded subsampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cil_data import DataError, long_tail_counts, long_tail_indices


def test_cifar100_lt_counts_of_the_lt_cil_protocol() -> None:
    counts = long_tail_counts(500, 100, 100)
    assert sum(counts) == 10847
    assert counts[:5] == [500, 477, 455, 434, 415]
    assert counts[-5:] == [6, 5, 5, 5, 5]
    # the formula of METHODS.md, evaluated independently
    assert counts == [math.floor(500 * 100 ** (-i / 99)) for i in range(100)]
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_cifar100_lt_indices_on_synthetic_labels() -> None:
    labels = torch.arange(100).repeat_interleave(500)[torch.randperm(50000, generator=torch.Generator().manual_seed(3))]
    idx = long_tail_indices(labels, 100, seed=1)
    assert idx.numel() == 10847
    assert torch.bincount(labels[idx], minlength=100).tolist() == long_tail_counts(500, 100, 100)
    assert bool((idx[1:] > idx[:-1]).all())  # sorted, distinct


def test_step_profile() -> None:
    assert long_tail_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    assert long_tail_counts(100, 5, 3, "step") == [100, 100, 33, 33, 33]
    assert long_tail_counts(100, 1, 10, "step") == [100]


@pytest.mark.parametrize("rho", [1, 1.0])
def test_rho_one(rho) -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    assert long_tail_counts(7, 4, rho) == [7] * 4
    assert long_tail_indices(labels, rho).tolist() == list(range(6))
    # an explicit n_max still caps every class
    assert torch.bincount(labels[long_tail_indices(labels, rho, n_max=1)]).tolist() == [1, 1, 1]


def test_ranking_decides_head_and_tail_and_seed_decides_the_draw() -> None:
    labels = torch.arange(4).repeat_interleave(50)
    ranking = [2, 0, 3, 1]
    idx = long_tail_indices(labels, 10, ranking=ranking, seed=0)
    counts = torch.bincount(labels[idx], minlength=4)
    expected = long_tail_counts(50, 4, 10)
    assert [int(counts[c]) for c in ranking] == expected
    same = long_tail_indices(labels, 10, ranking=ranking, seed=0)
    other = long_tail_indices(labels, 10, ranking=ranking, seed=1)
    gen = long_tail_indices(labels, 10, ranking=ranking, seed=torch.Generator().manual_seed(0))
    npg = long_tail_indices(labels, 10, ranking=ranking, seed=np.random.default_rng(0))
    assert torch.equal(idx, same) and torch.equal(idx, gen)
    assert not torch.equal(idx, other)
    assert torch.bincount(labels[npg], minlength=4).tolist() == counts.tolist()


def test_subsampling_is_uniform_within_a_class() -> None:
    labels = torch.zeros(10, dtype=torch.int64).repeat(2)
    labels[10:] = 1  # two classes of 10; rank-1 class keeps 1 (rho 10)
    hits = torch.zeros(10)
    for seed in range(400):
        idx = long_tail_indices(labels, 10, seed=seed)
        hits += torch.bincount(idx[idx >= 10] - 10, minlength=10)
    assert hits.sum() == 400 and hits.min() > 15 and hits.max() < 70  # ≈ 40 each


def test_default_n_max_is_the_smallest_class() -> None:
    labels = torch.cat([torch.zeros(30), torch.ones(20), torch.full((25,), 2)]).long()
    idx = long_tail_indices(labels, 4)
    assert torch.bincount(labels[idx]).tolist() == long_tail_counts(20, 3, 4)


def test_errors() -> None:
    labels = torch.arange(3).repeat(10)
    with pytest.raises(DataError, match=r"rho .* must be ≥ 1"):
        long_tail_counts(10, 3, 0.5)
    with pytest.raises(DataError, match=r"rho"):
        long_tail_indices(labels, float("nan"))
    with pytest.raises(DataError, match="profile"):
        long_tail_counts(10, 3, 2, "linear")
    with pytest.raises(DataError, match="leaves no image"):
        long_tail_counts(10, 3, 20)
    with pytest.raises(DataError, match="asks for"):
        long_tail_indices(labels, 2, n_max=11)
    with pytest.raises(DataError, match="no sample"):
        long_tail_indices(torch.tensor([0, 0, 2, 2]), 2)
    with pytest.raises(DataError, match="out of range"):
        long_tail_indices(torch.tensor([0, 1, 5]), 2, num_classes=3)
    with pytest.raises(DataError, match="twice"):
        long_tail_indices(labels, 2, ranking=[0, 0, 1])
    with pytest.raises(DataError, match="integer labels"):
        long_tail_indices(labels.float(), 2)
    with pytest.raises(DataError, match="seed"):
        long_tail_indices(labels, 2, seed=1.5)
