"""The BalancedS-CE paper's Table 6 baselines on the IL-baseline: the rescaled CE against a plain float64
formula, the two oversampling samplers, and balanced finetuning as a stage after the memory update
(trained on the memory alone, resumable inside it)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from cil_train.cli import main
from cil_train.context import PhaseData
from cil_train.methods.il_baseline import class_rescaled_cross_entropy
from cil_train.stages import ClassOversampling, MemoryOversampling


def test_class_rescaled_cross_entropy_matches_plain_float64_formula():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 3, 3])
    counts = torch.tensor([50.0, 20.0, 0.0, 4.0], dtype=torch.float64)  # class 2: no sample this phase
    got = class_rescaled_cross_entropy(z, y, counts)
    n, c = 74.0, 4
    plain = sum((n / (c * counts[y[i]])) * -(z[i, y[i]] - torch.log(torch.exp(z[i]).sum())) for i in range(9)) / 9
    assert torch.allclose(got, plain, atol=1e-12, rtol=0)
    g1, = torch.autograd.grad(got, z, retain_graph=True)
    g2, = torch.autograd.grad(plain, z)
    assert torch.allclose(g1, g2, atol=1e-12)
    torch.autograd.gradcheck(lambda t: class_rescaled_cross_entropy(t, y, counts), (z,))
    # one class only: weight 1, plain CE
    one = class_rescaled_cross_entropy(z[:5, :1], y[:5], torch.tensor([5.0]))
    assert torch.allclose(one, torch.zeros((), dtype=torch.float64))


def _ctx(n_new: int, n_mem: int, classes_new=(4, 5), classes_old=(0, 1, 2, 3)):
    y = torch.cat([torch.tensor(classes_new).repeat(n_new // len(classes_new)),
                   torch.tensor(classes_old).repeat(n_mem // len(classes_old))])
    is_mem = torch.cat([torch.zeros(n_new, dtype=torch.bool), torch.ones(n_mem, dtype=torch.bool)])
    data = PhaseData(x=torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8), y=y, is_memory=is_mem,
                     train=torch.arange(len(y)), val=torch.arange(0), new_x=None, new_y=None)
    return SimpleNamespace(data=data, generator=torch.Generator().manual_seed(0))


def test_memory_oversampling_balances_new_and_replayed_samples():
    ctx = _ctx(400, 40)
    sampler = MemoryOversampling(ctx, batch_size=100)
    assert sampler.draws == 800 and len(sampler) == 8
    drawn = torch.cat(list(sampler))
    assert len(drawn) == 800
    share = float(ctx.data.is_memory[drawn].double().mean())
    assert 0.45 < share < 0.55  # half of every epoch is replayed (in expectation)


def test_class_oversampling_repeats_exemplars_to_the_new_classes_mean():
    ctx = _ctx(400, 40)  # new classes: 200 each; old classes: 10 each → each exemplar 20 times
    sampler = ClassOversampling(ctx, batch_size=64)
    assert sampler.repeat == 20
    drawn = torch.cat(list(sampler))
    assert len(drawn) == 400 + 40 * 20
    assert torch.bincount(ctx.data.y[drawn]).tolist() == [200] * 6


@pytest.mark.parametrize("correction", ["memory-oversampling", "class-oversampling", "loss-rescaling",
                                        "separated-softmax"])
def test_corrections_run(tiny, correction):
    argv, out = tiny("--method", "il-baseline", "--il-correction", correction, "--epochs", "1")
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["method_options"]["il_correction"] == correction


def test_balanced_finetuning_trains_on_the_memory_after_its_update_and_resumes_inside(tiny, monkeypatch,
                                                                                     strip_timings):
    from cil_train import loop
    from cil_train.methods.il_baseline import ILBaseline

    seen = []
    original_stage = loop.Trainer._run_stage

    def spy(self, ctx, k, stage, *args, **kwargs):
        seen.append((ctx.t, stage.name, len(ctx.data.y), len(self.memory) if self.memory is not None else 0))
        return original_stage(self, ctx, k, stage, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "_run_stage", spy)
    extra = ("--method", "il-baseline", "--il-correction", "balanced-finetuning", "--il-finetune-epochs", "2",
             "--epochs", "1")
    argv, ref = tiny(*extra, out="ref")
    assert main(argv) == 0
    finetune = [s for s in seen if s[1] == "balanced-finetuning"]
    assert [s[0] for s in finetune] == [1, 2]
    assert all(n == mem for _, _, n, mem in finetune)  # the updated memory alone: every seen class
    m = json.loads((ref / "metrics.json").read_text())
    assert [len(p["epoch_losses"]) for p in m["phases"]] == [1, 3, 3]

    original_loss = ILBaseline.loss
    state = {"interrupted": False}

    def interrupt(self, ctx, batch):  # stop inside the second finetuning epoch of phase 3 (its first is saved)
        if ctx.t == 2 and ctx.stage.name == "balanced-finetuning" and ctx.epoch == 1 and not state["interrupted"]:
            state["interrupted"] = True
            raise KeyboardInterrupt
        return original_loss(self, ctx, batch)

    monkeypatch.setattr(ILBaseline, "loss", interrupt)
    argv, run = tiny(*extra, out="run")
    assert main(argv) == 130 and state["interrupted"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["stage"], ckpt["epochs_done"]) == (2, 1, 1)
    assert ckpt["memory_file"].endswith("after_phase_03.h5")
    assert main(["--resume", str(run), "--progress", "none"]) == 0
    assert strip_timings(json.loads((run / "metrics.json").read_text())) == strip_timings(m)
