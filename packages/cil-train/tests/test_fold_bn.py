"""--fold-bn (default on): the teacher's forwards, evaluation and feature extraction run on a copy with folded
batch norms, which gives the same outputs up to rounding; runs with and without it end alike (float32)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from cil_models import IncrementalNet
from cil_train.cli import main
from cil_train.context import PhaseContext
from cil_train.evaluation import Extractor


def _context(teacher, fold: bool) -> PhaseContext:
    return PhaseContext(run=None, t=1, model=None, teacher=teacher, device=torch.device("cpu"), num_old=3, num_new=2,
                        boundaries=[0, 3, 5], data=None, class_counts=None, original_counts=None,
                        memory_counts=None, n_seen=0, n_new=0, dataset_mean_count=0.0, generator=None,
                        normalize=None, extract=None, fold_teacher=fold)


def _teacher() -> IncrementalNet:
    torch.manual_seed(0)
    net = IncrementalNet("resnet8", in_channels=1)
    net.expand(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)
    return net.frozen_copy()


def test_frozen_teacher_is_a_folded_copy_made_once_per_teacher():
    teacher = _teacher()
    ctx = _context(teacher, fold=True)
    folded = ctx.frozen_teacher()
    assert folded is not teacher and ctx.frozen_teacher() is folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ctx.teacher_logits(x), teacher(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded.features(x), teacher.features(x), rtol=1e-5, atol=1e-5)
    ctx.teacher = _teacher()  # a new teacher in the phase (FOSTER's compression): a new copy
    assert ctx.frozen_teacher() is not folded


def test_without_folding_the_teacher_itself_runs():
    teacher = _teacher()
    ctx = _context(teacher, fold=False)
    assert ctx.frozen_teacher() is teacher
    with pytest.raises(RuntimeError, match="no teacher"):
        _context(None, fold=True).frozen_teacher()


@pytest.mark.parametrize("what", ["logits", "features", "both"])
def test_extractor_with_folding_gives_the_model_outputs(what):
    model = _teacher()
    model.requires_grad_(True)
    images = torch.randint(0, 256, (37, 1, 28, 28), dtype=torch.uint8)
    make = lambda fold: Extractor(torch.device("cpu"), 16, lambda u8: u8.float() / 255, contextlib.nullcontext,
                                  fold_bn=fold)
    folded, plain = make(True)(model, images, what), make(False)(model, images, what)
    for a, b in zip(folded if what == "both" else [folded], plain if what == "both" else [plain]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # the model itself is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert make(True)(model, images[:0], what) is not None  # no images: no copy, empty outputs


def test_extractor_folds_once_inside_a_fixed_block(monkeypatch):
    import cil_train.evaluation as E

    folds = []
    real = E.fold_batch_norms
    monkeypatch.setattr(E, "fold_batch_norms", lambda net: folds.append(net) or real(net))
    model, other = _teacher(), _teacher()
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    extract = Extractor(torch.device("cpu"), 8, lambda u8: u8.float() / 255, contextlib.nullcontext, fold_bn=True)
    outside = [extract(model, images, "features"), extract(model, images, "logits")]
    assert len(folds) == 2  # one copy per call outside a block
    with extract.fixed(model):
        inside = [extract(model, images, "features"), extract(model, images, "logits")]
        extract(other, images)  # another network (FOSTER evaluates its teacher): folded per call
        extract(model, images, "both")
        with pytest.raises(RuntimeError, match="nest"):
            with extract.fixed(model):
                pass
    assert [id(n) for n in folds[2:]] == [id(model), id(other)]  # the fixed model once, the other once
    for a, b in zip(outside, inside):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    extract(model, images)
    assert len(folds) == 5  # the block is over: per call again
    plain = Extractor(torch.device("cpu"), 8, lambda u8: u8.float() / 255, contextlib.nullcontext)
    with plain.fixed(model):
        plain(model, images)
    assert len(folds) == 5  # without --fold-bn nothing is folded


@pytest.mark.parametrize("method", ["icarl", "lucir", "podnet"])
def test_runs_with_and_without_folding_end_alike(tiny, method):
    results = []
    for flag in ("--fold-bn", "--no-fold-bn"):
        argv, out = tiny("--method", method, "--amp", "off", flag, out=flag.strip("-"))
        assert main(argv) == 0
        assert json.loads((out / "config.json").read_text())["fold_bn"] == (flag == "--fold-bn")
        results.append(json.loads((out / "metrics.json").read_text()))
    folded, kept = results
    # float32 rounding differences only: the same accuracies up to one test image of 60 in a phase
    for a, b in zip(folded["acc_per_phase"], kept["acc_per_phase"]):
        assert abs(a - b) <= 100 / 60 * 1.01


def test_a_run_reuses_the_herding_features_for_the_new_exemplars(tiny, monkeypatch):
    """The evaluation's class means forward only the old exemplars: the new ones' features come from the
    herding extraction of the same phase (same folded network); the run ends as one that extracts them again."""
    import cil_train.evaluation as E
    import cil_train.loop as L

    calls = []
    real_call = E.Extractor.__call__

    def logged(self, model, images, what="logits"):
        calls.append((what, len(images)))
        return real_call(self, model, images, what)

    monkeypatch.setattr(E.Extractor, "__call__", logged)
    argv, out = tiny("--method", "icarl", "--amp", "off", out="shared")
    assert main(argv) == 0
    shared = json.loads((out / "metrics.json").read_text())
    features = [n for what, n in calls if what == "features"]
    real_evaluate = L.evaluate_phase
    monkeypatch.setattr(L, "evaluate_phase", lambda *a, added_features=None, **k: real_evaluate(*a, **k))
    calls.clear()
    argv, out = tiny("--method", "icarl", "--amp", "off", out="again")
    assert main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    features_again = [n for what, n in calls if what == "features"]
    # per phase: herding over the new images, then the class means: 5 exemplars per class, 2 new classes a phase
    assert sum(features_again) - sum(features) == 3 * 2 * 5
    assert shared["nme"]["acc_per_phase"] == pytest.approx(again["nme"]["acc_per_phase"])
    assert shared["acc_per_phase"] == again["acc_per_phase"]


def _grown(extractors: int) -> IncrementalNet:
    torch.manual_seed(0)
    net = IncrementalNet("resnet8", in_channels=1)
    net.expand(2)
    for _ in range(extractors - 1):
        net.add_extractor()
        net.expand(2)
    net.freeze_extractors(range(extractors - 1))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("amp", [False, True])
def test_frozen_features_give_the_forward_outputs_and_skip_seen_images(fold, amp):
    from cil_train.evaluation import FrozenFeatures

    net = _grown(3)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    extract = Extractor(torch.device("cpu"), 16, lambda u8: u8.float() / 255, autocast, fold_bn=fold)
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    keys = torch.arange(100, 150)
    store = FrozenFeatures()
    calls = []
    for e in net.extractors:
        e.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    first = extract.with_frozen_features(net, images[:30], keys[:30], store, "both")
    assert len(store) == 3 * 30  # the two frozen extractors' rows and the newest one's
    want = extract(net, images[:30], "both")
    if not fold:  # the hooks see the network itself (with folding they see the folded copy's extractors)
        assert sum(calls) == 3 * 30 * 2
    for a, b in zip(first, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a later phase: 20 new images, in another order; the frozen extractors forward only those
    calls.clear()
    order = torch.randperm(50, generator=torch.Generator().manual_seed(4))
    logits = extract.with_frozen_features(net, images[order], keys[order], store)
    torch.testing.assert_close(logits, extract(net, images[order]), rtol=0, atol=0)
    assert len(store) == 3 * 50
    if not fold:
        assert sum(calls) == 3 * 20 + 3 * 50  # every extractor over the new images only; then the check
    # an extractor whose weights change is computed again (here: the step of an optimiser, in place), the
    # others are not
    with torch.no_grad():
        net.extractors[0].conv1.weight.mul_(1.5)
        net.extractors[2].conv1.weight.add_(0.25)  # the trainable newest one, trained further
    calls.clear()
    torch.testing.assert_close(extract.with_frozen_features(net, images, keys, store), extract(net, images),
                               rtol=0, atol=0)
    if not fold:
        assert sum(calls) == 2 * 50 + 3 * 50
    # a network without frozen extractors is the plain forward; errors are named
    plain = _grown(1)
    torch.testing.assert_close(extract.with_frozen_features(plain, images, keys, store), extract(plain, images))
    with pytest.raises(ValueError, match="keys for"):
        extract.with_frozen_features(net, images, keys[:3], store)
    with pytest.raises(ValueError, match="what must be"):
        extract.with_frozen_features(net, images, keys, store, "features")


def test_frozen_features_forget_extractors_that_are_gone():
    import gc

    from cil_train.evaluation import FrozenFeatures

    store = FrozenFeatures()
    extractor = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    store.features(extractor, torch.arange(4), lambda rows: extractor(x[rows]).detach())
    assert len(store) == 4
    del extractor
    gc.collect()
    other = nn.Linear(3, 2)
    store.features(other, torch.arange(2), lambda rows: other(x[rows]).detach())
    assert len(store) == 2


@pytest.mark.parametrize("method", ["der", "icarl"])
def test_runs_keep_frozen_features_and_end_alike(tiny, monkeypatch, method):
    """DER's frozen extractors forward the test images they have seen once; the run ends as one that forwards
    every extractor in every evaluation (bf16, the CPU default where it is fast)."""
    import cil_train.evaluation as E
    import cil_train.loop as L

    used = []  # per call: (test images asked for, images forwarded)
    real_features = E.FrozenFeatures.features

    def counted(self, extractor, keys, compute):
        used.append([len(keys), 0])
        return real_features(self, extractor, keys, lambda rows: used[-1].__setitem__(1, len(rows)) or compute(rows))

    monkeypatch.setattr(E.FrozenFeatures, "features", counted)
    argv, out = tiny("--method", method, out="kept")
    assert main(argv) == 0
    kept = json.loads((out / "metrics.json").read_text())
    if method == "der":  # phase 2: two extractors over all test images; phase 3: three, the old two over the new
        (n2, _), _, (n3, _), _, _ = used
        assert used == [[n2, n2], [n2, n2], [n3, n3 - n2], [n3, n3 - n2], [n3, n3]]
    else:
        assert used == []
    real_evaluate = L.evaluate_phase
    monkeypatch.setattr(L, "evaluate_phase", lambda *a, frozen_features=None, **k: real_evaluate(*a, **k))
    argv, out = tiny("--method", method, out="again")
    assert main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    for key in ("acc_per_phase", "acc_matrix", "old_acc", "new_acc"):
        assert kept[key] == again[key]
