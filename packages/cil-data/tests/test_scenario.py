"""Class orders, phase splits and the phases of a scenario."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cil_data import DataError, ImageDataset, IncrementalScenario, class_order, long_tail_indices, phase_increments


def test_seed1993_order_equals_numpy_global_seeding_and_leaves_global_state_alone() -> None:
    saved = np.random.get_state()
    try:
        np.random.seed(1993)
        reference = np.random.permutation(100).tolist()
        np.random.seed(7)
        before = np.random.get_state()
        order = class_order("seed1993", 100)
        after = np.random.get_state()
        assert order == reference
        assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
        assert np.random.RandomState(1993).permutation(100).tolist() == reference
    finally:
        np.random.set_state(saved)
    assert order[:5] == [68, 56, 78, 8, 23]  # iCaRL/PODNet CIFAR-100 order starts like this


def test_other_orders() -> None:
    assert class_order("ordered", 4) == [0, 1, 2, 3]
    assert class_order("tail-first", 4) == [3, 2, 1, 0]
    assert class_order("ordered", 4, ranking=[2, 0, 3, 1]) == [2, 0, 3, 1]
    assert class_order("tail-first", 4, ranking=[2, 0, 3, 1]) == [1, 3, 0, 2]
    assert class_order([3, 1, 0, 2], 4) == [3, 1, 0, 2]
    assert class_order("random", 6, seed=1) == class_order("random", 6, seed=1)
    assert sorted(class_order("random", 6, seed=1)) == list(range(6))
    with pytest.raises(DataError, match="seed"):
        class_order("random", 6)
    with pytest.raises(DataError, match="unknown"):
        class_order("shuffled", 6)
    with pytest.raises(DataError, match="twice"):
        class_order([0, 1, 1], 3)
    with pytest.raises(DataError, match="all 3 classes"):
        class_order([0, 1], 3)
    with pytest.raises(DataError, match="out of range"):
        class_order([0, 1, 3], 3)


def test_phase_increments() -> None:
    assert phase_increments(100, 10) == [10] * 10
    assert phase_increments(100, 6, 50) == [50, 10, 10, 10, 10, 10]
    assert phase_increments(100, base_classes=50, num_steps=5) == [50, 10, 10, 10, 10, 10]
    assert phase_increments(100, base_classes=50, num_steps=10) == [50] + [5] * 10
    assert phase_increments(10, 1, 10) == [10]
    assert phase_increments(10, increments=[4, 3, 3]) == [4, 3, 3]
    with pytest.raises(DataError, match="sum to 9"):
        phase_increments(10, increments=[4, 3, 2])
    with pytest.raises(DataError, match=r"increments\[1\] must be ≥ 1"):
        phase_increments(10, increments=[10, 0])
    with pytest.raises(DataError, match="does not divide"):
        phase_increments(10, 3)
    with pytest.raises(DataError, match="cannot be split equally"):
        phase_increments(100, 5, 50)  # 50 over 4 steps
    with pytest.raises(DataError, match="exceeds"):
        phase_increments(10, 2, 11)
    with pytest.raises(DataError, match="not both"):
        phase_increments(100, 6, 50, num_steps=5)
    with pytest.raises(DataError, match="do not also give"):
        phase_increments(10, 2, increments=[5, 5])
    with pytest.raises(DataError, match="give num_phases"):
        phase_increments(10)


def _toy_dataset() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    train_labels = torch.arange(6).repeat_interleave(torch.tensor([8, 7, 6, 5, 4, 3]))
    test_labels = torch.arange(6).repeat(2)
    return ImageDataset(
        "toy",
        torch.randint(0, 256, (len(train_labels), 1, 4, 4), generator=g, dtype=torch.uint8),
        train_labels,
        torch.randint(0, 256, (12, 1, 4, 4), generator=g, dtype=torch.uint8),
        test_labels,
        [f"c{i}" for i in range(6)],
    )


def test_scenario_phases_against_plain_reference() -> None:
    ds = _toy_dataset()
    order = [4, 1, 5, 0, 3, 2]
    lt = long_tail_indices(ds.train_labels, 2, seed=0)
    sc = IncrementalScenario(ds, order, [2, 2, 2], lt)
    assert sc.num_phases == 3 and sc.num_classes == 6 and sc.boundaries == [0, 2, 4, 6]
    assert sc.class_order == order
    assert sc.to_incremental(torch.tensor(order)).tolist() == list(range(6))
    assert sc.to_original(torch.arange(6)).tolist() == order
    kept = ds.train_labels[lt]
    assert sc.train_counts.tolist() == [int((kept == c).sum()) for c in order]
    for t, phase in enumerate(sc):
        new = order[2 * t : 2 * t + 2]
        seen = order[: 2 * t + 2]
        expect_train = [int(i) for i in lt if int(ds.train_labels[i]) in new]
        expect_test = [i for i in range(12) if int(ds.test_labels[i]) in seen]
        assert phase.index == t and phase.num_old == 2 * t and phase.num_new == 2 and phase.num_seen == 2 * t + 2
        assert phase.classes == range(2 * t, 2 * t + 2)
        assert phase.train_indices.tolist() == expect_train
        assert phase.test_indices.tolist() == expect_test
        assert phase.train_counts.tolist() == sc.train_counts[: 2 * t + 2].tolist()
        x, y = sc.train_data(phase)
        assert torch.equal(x, ds.train_images[phase.train_indices])
        assert y.tolist() == [order.index(int(ds.train_labels[i])) for i in expect_train]
        xt, yt = sc.test_data(t)
        assert xt.shape[0] == len(expect_test) and int(yt.max()) < phase.num_seen


def test_scenario_errors() -> None:
    ds = _toy_dataset()
    with pytest.raises(DataError, match="sum to"):
        IncrementalScenario(ds, list(range(6)), [2, 2])
    with pytest.raises(DataError, match="twice"):
        IncrementalScenario(ds, [0, 0, 1, 2, 3, 4], [3, 3])
    with pytest.raises(DataError, match="no training sample"):
        IncrementalScenario(ds, list(range(6)), [3, 3], torch.tensor([0, 1, 8]))
    with pytest.raises(DataError, match="out of range"):
        IncrementalScenario(ds, list(range(6)), [3, 3], torch.tensor([0, 1000]))
    with pytest.raises(DataError, match="repeated"):
        IncrementalScenario(ds, list(range(6)), [6], torch.arange(len(ds.train_labels)).repeat(2))
    sc = IncrementalScenario(ds, list(range(6)), [6])
    with pytest.raises(DataError, match="out of range"):
        sc.phase(1)
    with pytest.raises(DataError, match="labels must lie"):
        sc.to_incremental(torch.tensor([6]))
