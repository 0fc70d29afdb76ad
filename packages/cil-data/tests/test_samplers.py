"""SS-IL ratio-preserving batches, class-balanced sampling, balanced validation split."""

from __future__ import annotations

import pytest
import torch

from cil_data import (
    DataError,
    RatioPreservingSampler,
    balanced_validation_split,
    class_balanced_indices,
    validation_split_at_most,
)


def test_ratio_preserving_epoch_covers_new_data_once_and_cycles_memory() -> None:
    s = RatioPreservingSampler(10, 7, batch_new=4, batch_memory=3, generator=torch.Generator().manual_seed(0))
    assert len(s) == 3
    batches = list(s)
    assert [len(n) for n, _ in batches] == [4, 4, 2]
    assert sorted(torch.cat([n for n, _ in batches]).tolist()) == list(range(10))
    assert all(len(m) == 3 for _, m in batches)
    # the memory stream is consecutive shuffled passes: every 7 draws hold each memory index once
    stream = torch.cat([m for _, m in batches] + [m for _, m in s] + [m for _, m in s])  # 27 draws
    for lo in range(0, 21, 7):
        assert sorted(stream[lo : lo + 7].tolist()) == list(range(7))
    assert len(list(s)) == 3  # every epoch is a full pass again


def test_memory_smaller_than_its_batch_wraps_within_a_batch() -> None:
    s = RatioPreservingSampler(5, 2, batch_new=5, batch_memory=5, generator=1)
    (new, mem), = list(s)
    assert sorted(new.tolist()) == list(range(5))
    assert len(mem) == 5 and sorted(mem[:4].tolist()) == [0, 0, 1, 1]


def test_no_memory_and_drop_last() -> None:
    s = RatioPreservingSampler(10, 0, batch_new=4, batch_memory=32, drop_last=True)
    batches = list(s)
    assert len(batches) == len(s) == 2 and all(m.numel() == 0 for _, m in batches)
    with pytest.raises(DataError, match="no batch"):
        RatioPreservingSampler(3, 0, batch_new=4, drop_last=True)
    with pytest.raises(DataError, match="num_new"):
        RatioPreservingSampler(0, 5)


def test_same_seed_same_batches_and_exact_resume_mid_epoch() -> None:
    def run(sampler, epochs):
        return [(n.tolist(), m.tolist()) for _ in range(epochs) for n, m in sampler]

    a = RatioPreservingSampler(23, 9, 5, 4, generator=torch.Generator().manual_seed(3))
    full = run(a, 3)
    b = RatioPreservingSampler(23, 9, 5, 4, generator=torch.Generator().manual_seed(3))
    assert run(b, 3) == full

    g = torch.Generator().manual_seed(3)
    c = RatioPreservingSampler(23, 9, 5, 4, generator=g)
    got = run(c, 1)
    it = iter(c)
    got += [(n.tolist(), m.tolist()) for n, m in (next(it), next(it))]
    state, gen_state = c.state_dict(), g.get_state()  # checkpoint after 2 batches of epoch 2
    g2 = torch.Generator().manual_seed(999)
    g2.set_state(gen_state)
    d = RatioPreservingSampler(23, 9, 5, 4, generator=g2)
    d.load_state_dict(state)
    got += run(d, 2)
    assert got == full
    # a sampler that owns its generator (int seed) carries the generator state in its state_dict
    e = RatioPreservingSampler(23, 9, 5, 4, generator=3)
    owned = run(e, 1)
    mid = e.state_dict()
    rest = run(e, 2)
    f = RatioPreservingSampler(23, 9, 5, 4, generator=3)
    f.load_state_dict(mid)
    assert run(f, 2) == rest and owned == full[: len(owned)]
    with pytest.raises(DataError, match="num_memory"):
        RatioPreservingSampler(23, 8, 5, 4).load_state_dict(state)


def test_class_balanced_indices_are_balanced_over_classes() -> None:
    labels = torch.cat([torch.zeros(1000), torch.ones(10), torch.full((50,), 3)]).long()
    idx = class_balanced_indices(labels, 30000, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx], minlength=4).float()
    assert counts[2] == 0
    assert torch.allclose(counts[[0, 1, 3]] / 30000, torch.full((3,), 1 / 3), atol=0.02)
    within = torch.bincount(idx[labels[idx] == 1] - 1000, minlength=10).float()
    assert within.min() > 0.6 * within.mean()
    assert torch.equal(class_balanced_indices(labels, 50, 7), class_balanced_indices(labels, 50, 7))  # int seed = fresh generator
    with pytest.raises(DataError, match="empty"):
        class_balanced_indices(torch.empty(0, dtype=torch.long), 5, 0)


def test_balanced_validation_split() -> None:
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 3 + [4] * 8)
    train, val = balanced_validation_split(labels, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[val], minlength=5).tolist() == [2, 2, 2, 0, 2]
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(labels)))
    assert bool((train[1:] > train[:-1]).all()) and bool((val[1:] > val[:-1]).all())
    t2, v2 = balanced_validation_split(labels, 2, 0)
    t3, v3 = balanced_validation_split(labels, 2, 0)
    assert torch.equal(v2, v3) and torch.equal(t2, t3)
    with pytest.raises(DataError, match="class 2 has 3 samples"):
        balanced_validation_split(labels, 3, 0)


def test_validation_split_at_most_keeps_one_training_sample_of_every_class() -> None:
    # classes with 1, 2, 3 and 20 samples; 2 requested per class
    labels = torch.tensor([0] * 1 + [1] * 2 + [2] * 3 + [3] * 20 + [5] * 2)
    split = validation_split_at_most(labels, 2, torch.Generator().manual_seed(0))
    assert split.held_out.tolist() == [0, 1, 2, 2, 0, 1]
    assert torch.bincount(labels[split.val], minlength=6).tolist() == [0, 1, 2, 2, 0, 1]
    assert torch.bincount(labels[split.train], minlength=6).tolist() == [1, 1, 1, 18, 0, 1]
    assert split.reduced == {0: 0, 1: 1, 5: 1}
    assert sorted(torch.cat([split.train, split.val]).tolist()) == list(range(len(labels)))
    line = split.describe(2)
    assert "0 for class 0" in line and "1 for classes 1, 5" in line
    assert validation_split_at_most(torch.tensor([0] * 5 + [1] * 5), 2, 0).describe(2) == ""


def test_validation_split_at_most_equals_the_strict_split_when_every_class_has_enough() -> None:
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 3 + [4] * 8)
    train, val = balanced_validation_split(labels, 2, torch.Generator().manual_seed(3))
    split = validation_split_at_most(labels, 2, torch.Generator().manual_seed(3))
    assert torch.equal(train, split.train) and torch.equal(val, split.val) and split.reduced == {}
