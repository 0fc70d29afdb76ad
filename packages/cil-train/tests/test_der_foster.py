"""DER and FOSTER (and their JIOC versions) end to end on the tiny data: networks that grow (DER) or return to
one extractor (FOSTER), frozen extractors bitwise unchanged through a later phase (batch-norm statistics
included), JIOC's teacher logits equal to the previous network's, ``--jioc none`` equal to the base method, the
balanced classifier stage, and a resume from inside FOSTER's compression stage."""

from __future__ import annotations

import json

import pytest
import torch

from cil_train.cli import main
from cil_train.methods.der import DER, DERJIOC
from cil_train.methods.expansion_common import balanced_subset
from cil_train.methods.foster import FOSTER


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def _same_run(a: dict, b: dict, strip) -> bool:
    a, b = strip(a), strip(b)
    a.pop("method"), b.pop("method")
    return a == b


def test_der_grows_one_frozen_extractor_per_phase_and_drops_its_aux_head(tiny):
    argv, out = tiny("--method", "der", "--epochs", "1")
    assert main(argv) == 0
    phases = _metrics(out)["phases"]
    assert [p["extractors"] for p in phases] == [1, 2, 3]
    assert phases[2]["parameters"] > phases[1]["parameters"] > 1.9 * phases[0]["parameters"]
    assert all("wa_gamma" in p for p in phases[1:])
    net = torch.load(out / "checkpoint.pt", weights_only=True)["net"]
    assert net["extractors"] == {"count": 3, "frozen": [True, True, False]} and net["aux_head"] is None


def test_frozen_extractors_do_not_change_bitwise_during_a_later_der_phase(tiny, monkeypatch):
    """Every frozen extractor (weights and batch-norm running statistics and counters) is bit-identical at the
    end of each phase to what it was when that phase's training started."""
    snapshots: dict[int, list[dict[str, torch.Tensor]]] = {}
    checked = []
    start, end = DER.start_phase, DER.end_phase

    def state_of(model, i):
        return {k: v.detach().clone() for k, v in model.extractors[i].state_dict().items()}

    def spy_start(self, ctx):
        snapshots[ctx.t] = [state_of(ctx.model, i) for i in ctx.model.frozen_extractors]
        return start(self, ctx)

    def spy_end(self, ctx):
        frozen = ctx.model.frozen_extractors
        assert frozen == list(range(ctx.t))
        for i, before in zip(frozen, snapshots[ctx.t]):
            after = state_of(ctx.model, i)
            assert any("running_mean" in k for k in after) and any("num_batches_tracked" in k for k in after)
            for key in before:
                assert torch.equal(before[key], after[key]), (ctx.t, i, key)
            checked.append((ctx.t, i))
        # the trained extractor did move
        if ctx.t:
            newest = ctx.model.extractors[-1].state_dict()
            assert not all(torch.equal(newest[k], v) for k, v in ctx.model.extractors[-2].state_dict().items())
        return end(self, ctx)

    monkeypatch.setattr(DER, "start_phase", spy_start)
    monkeypatch.setattr(DER, "end_phase", spy_end)
    argv, _ = tiny("--method", "der", "--epochs", "2")
    assert main(argv) == 0
    assert checked == [(1, 0), (2, 0), (2, 1)]


def test_der_jioc_teacher_logits_are_the_previous_networks(tiny, monkeypatch):
    """ẑ = W_{t−1}[f_1..f_{t−1}](x) + b_{t−1} from the frozen columns equals the previous network's logits."""
    previous = {}
    compared = []
    grow, loss = DERJIOC.grow_network, DERJIOC.loss

    def spy_grow(self, ctx):
        previous[ctx.t] = ctx.model.frozen_copy()
        return grow(self, ctx)

    def spy_loss(self, ctx, batch):
        if ctx.t > 0 and len(compared) < ctx.t:
            prev = previous[ctx.t]
            with torch.no_grad():
                _, feats = ctx.model(batch.x, return_features=True)
                ours = self._old_logits(ctx.model, feats)
                want = prev(batch.x).float()
            assert ours.shape == want.shape == (len(batch.y), ctx.num_old)
            assert torch.allclose(ours, want, atol=1e-5, rtol=1e-5)
            compared.append(ctx.t)
        return loss(self, ctx, batch)

    monkeypatch.setattr(DERJIOC, "grow_network", spy_grow)
    monkeypatch.setattr(DERJIOC, "loss", spy_loss)
    argv, out = tiny("--method", "der-jioc", "--epochs", "1", "--amp", "off")
    assert main(argv) == 0
    assert compared == [1, 2]
    assert json.loads((out / "config.json").read_text())["method_options"]["jioc"] == "both"


@pytest.mark.parametrize("base", ["der", "foster"])
def test_jioc_none_is_the_base_method(tiny, base, strip_timings):
    argv, ref = tiny("--method", base, "--epochs", "1", out="base")
    assert main(argv) == 0
    argv, run = tiny("--method", f"{base}-jioc", "--jioc", "none", "--epochs", "1", out="jioc-none")
    assert main(argv) == 0
    assert _same_run(_metrics(ref), _metrics(run), strip_timings)


@pytest.mark.parametrize("method, mode", [("der-jioc", "ic"), ("foster-jioc", "oc")])
def test_jioc_ablation_rows_run_on_der_and_foster(tiny, method, mode):
    argv, out = tiny("--method", method, "--jioc", mode, "--epochs", "1", "--phases", "2")
    assert main(argv) == 0
    assert len(_metrics(out)["acc_per_phase"]) == 2


def test_der_balanced_classifier_stage_retrains_only_the_head(tiny, monkeypatch):
    seen = []
    original = DER._classifier_parameters

    def spy(self, ctx, model):
        params = original(self, ctx, model)
        seen.append((ctx.t, model.frozen_extractors, sum(p.numel() for p in params),
                     sum(p.numel() for p in model.head.parameters())))
        return params

    monkeypatch.setattr(DER, "_classifier_parameters", spy)
    argv, out = tiny("--method", "der", "--der-bias-correction", "balanced", "--der-balanced-epochs", "2",
                     "--epochs", "1")
    assert main(argv) == 0
    assert [s[0] for s in seen] == [1, 2]
    assert all(frozen == list(range(t + 1)) and n == head for t, frozen, n, head in seen)
    phases = _metrics(out)["phases"]
    assert [len(p["epoch_losses"]) for p in phases] == [1, 3, 3] and "wa_gamma" not in phases[1]


def test_balanced_subset_cuts_every_class_to_the_smallest_count():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    positions = torch.arange(100, 115)
    pick = balanced_subset(positions, labels, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[pick - 100]).tolist() == [3, 3, 3]
    assert len(set(pick.tolist())) == 9


def test_foster_returns_to_one_extractor_and_records_teacher_and_student(tiny):
    argv, out = tiny("--method", "foster", "--epochs", "2", "--foster-compression-epochs", "1")
    assert main(argv) == 0
    m = _metrics(out)
    phases = m["phases"]
    assert [len(p["epoch_losses"]) for p in phases] == [2, 3, 3]  # boosting 2 + compression 1
    single = phases[0]["parameters"]
    for p in phases[1:]:
        assert single < p["parameters"] < 1.01 * single  # one extractor + a slightly larger head
        assert p["teacher_parameters"] > 1.9 * single
    assert m["acc_per_phase"][1:] == [p["foster_teacher_acc"] for p in phases[1:]]  # default: the teacher
    net = torch.load(out / "checkpoint.pt", weights_only=True)["net"]
    assert net["extractors"] == {"count": 1, "frozen": [False]} and net["aux_head"] is None


def test_foster_eval_student_reports_the_compressed_network(tiny):
    argv, out = tiny("--method", "foster", "--foster-eval", "student", "--epochs", "1", "--phases", "2")
    assert main(argv) == 0
    phases = _metrics(out)["phases"]
    assert _metrics(out)["acc_per_phase"][1] == phases[1]["foster_student_acc"]


def test_foster_resumes_inside_its_compression_stage(tiny, monkeypatch, strip_timings):
    extra = ("--method", "foster-jioc", "--epochs", "1", "--foster-compression-epochs", "2")
    argv, ref = tiny(*extra, out="ref")
    assert main(argv) == 0
    expected = _metrics(ref)

    original = FOSTER.compression_loss
    state = {"interrupted": False}

    def interrupt(self, ctx, batch):  # inside the second compression epoch of phase 3 (the first is saved)
        if ctx.t == 2 and ctx.epoch == 1 and not state["interrupted"]:
            state["interrupted"] = True
            raise KeyboardInterrupt
        return original(self, ctx, batch)

    monkeypatch.setattr(FOSTER, "compression_loss", interrupt)
    argv, run = tiny(*extra, out="run")
    assert main(argv) == 130 and state["interrupted"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["stage"], ckpt["epochs_done"]) == (2, 1, 1)
    assert ckpt["net"]["extractors"]["count"] == 1  # the student
    assert ckpt["teacher"]["extractors"] == {"count": 2, "frozen": [True, False]}  # the boosted network
    assert set(ckpt["method"]) == {"old_weight", "old_bias"}
    assert main(["--resume", str(run), "--progress", "none"]) == 0
    assert strip_timings(_metrics(run)) == strip_timings(expected)


@pytest.mark.parametrize("counts", ["true", "official"])
def test_foster_counts_choose_the_class_counts_of_both_weightings(tiny, monkeypatch, counts):
    """``--foster-counts official`` counts each new class as 500 images (the official code and PyCIL on CIFAR-100),
    so on a long tail the new classes get equal weights; ``true`` (default) weights them by their real counts.
    Old classes count their exemplars either way."""
    import cil_losses.expansion as E

    seen = []
    original = FOSTER.start_phase

    def spy(self, ctx):
        original(self, ctx)
        seen.append((ctx.num_old, ctx.class_counts.clone(), {k: w.clone() for k, w in self._weights.items()}))

    monkeypatch.setattr(FOSTER, "start_phase", spy)
    argv, out = tiny("--method", "foster", "--epochs", "1", "--foster-compression-epochs", "1", "--foster-counts",
                     counts)
    assert main(argv) == 0
    num_old, true_counts, weights = seen[-1]  # the last phase: 4 old classes (exemplars) + 2 new ones (a tail)
    assert num_old == 4 and true_counts[num_old] != true_counts[num_old + 1]
    used = true_counts.clone()
    if counts == "official":
        used[num_old:] = 500.0
    for key, beta in (("boost", 0.96), ("compress", 0.97)):
        want = E.effective_number_weights(used, beta).float()
        torch.testing.assert_close(weights[key], want)
        new = weights[key][num_old:]
        assert bool(new[0] == new[1]) is (counts == "official")
