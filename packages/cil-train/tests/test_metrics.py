"""Metrics of METHODS.md §6 against direct per-sample / per-class references."""

from __future__ import annotations

import pytest
import torch

from cil_train import metrics as M


def _random(seed: int, n: int = 400, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randint(0, classes, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.6, y, noise)
    return pred, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_accuracies_match_loop(seed):
    pred, y = _random(seed)
    bounds = [0, 3, 4, 10]
    got = M.task_accuracies(pred, y, bounds)
    for s in range(3):
        sel = [i for i in range(len(y)) if bounds[s] <= int(y[i]) < bounds[s + 1]]
        want = 100.0 * sum(int(pred[i]) == int(y[i]) for i in sel) / len(sel)
        assert got[s] == pytest.approx(want)


def test_task_accuracy_of_an_absent_task_is_none():
    y = torch.tensor([0, 1, 1])
    assert M.task_accuracies(y, y, [0, 2, 4]) == [100.0, None]


@pytest.mark.parametrize("seed", [0, 1])
def test_old_new_and_imbalance_score(seed):
    pred, y = _random(seed)
    num_old = 6
    old, new = M.old_new_accuracy(pred, y, num_old)
    o = [i for i in range(len(y)) if y[i] < num_old]
    n = [i for i in range(len(y)) if y[i] >= num_old]
    assert old == pytest.approx(100.0 * sum(int(pred[i] == y[i]) for i in o) / len(o))
    assert new == pytest.approx(100.0 * sum(int(pred[i] == y[i]) for i in n) / len(n))
    e_pn = sum(int(pred[i] >= num_old) for i in o) / len(o)
    e_np = sum(int(pred[i] < num_old) for i in n) / len(n)
    assert M.imbalance_score(pred, y, num_old) == pytest.approx(50.0 * (e_pn + e_np))
    assert M.imbalance_score(pred, y, 0) is None


def test_imbalance_score_extremes():
    y = torch.tensor([0, 1, 2, 3])
    assert M.imbalance_score(y, y, 2) == 0.0
    always_new = torch.full_like(y, 3)
    # every old sample goes to a new class (e(p,n) = 1), no new sample goes to an old one (e(n,p) = 0)
    assert M.imbalance_score(always_new, y, 2) == 50.0


def test_shot_bins_follow_the_train_counts():
    counts = torch.tensor([500, 101, 100, 20, 19, 5])
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    pred = torch.tensor([0, 0, 2, 0, 4, 0])
    shots = M.shot_accuracy(pred, y, counts)
    assert shots == {"many": 50.0, "medium": 50.0, "few": 50.0}
    assert M.shot_accuracy(pred[:2], y[:2], counts)["few"] is None


def test_confusion_matrix_counts_pairs():
    pred, y = _random(3, classes=5)
    cm = M.confusion_matrix(pred, y, 5)
    for i in range(5):
        for j in range(5):
            assert cm[i, j] == int(((y == i) & (pred == j)).sum())
    assert int(cm.sum()) == len(y)


def test_forgetting_and_average():
    matrix = [[90.0, None, None], [70.0, 80.0, None], [60.0, 85.0, 75.0]]
    # task 0: max(90, 70) - 60 = 30; task 1: max(80) - 85 = -5
    assert M.forgetting(matrix) == pytest.approx(12.5)
    assert M.forgetting([[90.0]]) is None
    assert M.average_incremental_accuracy([90.0, 75.0, 60.0]) == pytest.approx(75.0)


def test_empty_sets_give_none():
    empty = torch.zeros(0, dtype=torch.int64)
    assert M.accuracy(empty, empty) is None
    assert M.old_new_accuracy(empty, empty, 2) == (None, None)


def test_evaluation_with_nme_runs_one_forward_over_the_test_images():
    """Phase evaluation with the NME classifier takes the CNN's logits and the test features from one forward,
    and gives the predictions of the separate forwards it replaces (CNN logits; NME over features)."""
    import contextlib
    from types import SimpleNamespace

    from cil_models import IncrementalNet, NMEClassifier
    from cil_train.evaluation import Extractor, evaluate_phase

    torch.manual_seed(0)
    net = IncrementalNet("resnet8", in_channels=1)
    net.expand(2)
    net.expand(2)
    g = torch.Generator().manual_seed(1)
    test_x = torch.randint(0, 256, (37, 1, 16, 16), dtype=torch.uint8, generator=g)
    test_y = torch.arange(37) % 4
    phase = SimpleNamespace(index=1, num_old=2, num_new=2, num_seen=4)
    scenario = SimpleNamespace(phase=lambda t: phase, test_data=lambda p: (test_x, test_y),
                               boundaries=[0, 2, 4], train_counts=torch.tensor([50, 30, 10, 5]))
    images = torch.randint(0, 256, (9, 1, 16, 16), dtype=torch.uint8, generator=g)
    memory = type("Memory", (), {"images": images, "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3]),
                                 "__len__": lambda self: 9})()
    extract = Extractor(torch.device("cpu"), 16, lambda u8: u8.float() / 255, contextlib.nullcontext)
    seen = []
    real_features = net.features
    net.features = lambda x: (seen.append(x.shape[0]), real_features(x))[1]
    rec, pred, _ = evaluate_phase(net, scenario, 1, extract, ("nme",), memory)
    assert sum(seen) == 37 + 9  # the test images once, the exemplars once
    net.features = real_features
    want_cnn = extract(net, test_x, "logits").argmax(1)
    nme = NMEClassifier()
    nme.fit(extract(net, memory.images, "features"), memory.labels, 4)
    want_nme = nme.predict(extract(net, test_x, "features"))
    assert torch.equal(pred, want_cnn)
    assert rec["nme"]["acc"] == pytest.approx(M.accuracy(want_nme, test_y))
    assert rec["acc"] == pytest.approx(M.accuracy(want_cnn, test_y))
    with pytest.raises(ValueError, match="what must be"):
        extract(net, test_x, "nme")
    # the features of the exemplars the phase added (the memory's last rows), kept from herding: only the other
    # exemplars are forwarded again, and the classifier is the same
    kept = extract(net, memory.images[6:], "features")
    seen.clear()
    net.features = lambda x: (seen.append(x.shape[0]), real_features(x))[1]
    again, _, _ = evaluate_phase(net, scenario, 1, extract, ("nme",), memory, added_features=kept)
    assert sum(seen) == 37 + 6
    net.features = real_features
    assert again["nme"] == rec["nme"] and again["acc"] == rec["acc"]
    with pytest.raises(ValueError, match="10 rows but the memory holds 9"):
        evaluate_phase(net, scenario, 1, extract, ("nme",), memory, added_features=torch.zeros(10, kept.shape[1]))
