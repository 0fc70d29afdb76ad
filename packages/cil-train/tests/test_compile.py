"""``--compile``: extractors compiled once per run (no recompilation per phase), the teacher compiled too,
checkpoints unchanged; the ``auto`` rule and the planned-images estimate."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from cil_train import RunConfig, compilation
from cil_train.cli import main


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compiled_run_compiles_once_and_the_teacher_reuses_it(tiny_argv, tmp_path, monkeypatch):
    from cil_train import loop as L

    torch._dynamo.reset()
    seen: list[tuple[int, int, bool]] = []
    real_record = L.Trainer._record_phase

    def record(self, ctx, phase, *args, **kw):
        teacher = ctx.teacher
        seen.append((phase.index, _graphs(), teacher is not None and all(
            compilation.is_compiled(e) for e in teacher.extractors)))
        assert all(compilation.is_compiled(e) for e in ctx.model.extractors)
        return real_record(self, ctx, phase, *args, **kw)

    monkeypatch.setattr(L.Trainer, "_record_phase", record)
    out = tmp_path / "run"
    assert main(tiny_argv(out, "--method", "icarl", "--phases", "3", "--epochs", "1",
                          "--compile", "--threads", "1")) == 0
    assert json.loads((out / "config.json").read_text())["compile"] == "on"
    (t0, g0, _), (t1, g1, teacher1), (t2, g2, teacher2) = seen
    assert teacher1 and teacher2  # the teacher's extractors are compiled too
    assert g0 >= 1
    assert g2 == g1, "phase 3 compiled new graphs: the head's growth or the new teacher recompiled the backbone"
    from cil_models import IncrementalNet
    from cil_train.checkpoint import CHECKPOINT, load_checkpoint

    net = load_checkpoint(out / CHECKPOINT).net  # the compiled run's checkpoint is an eager network's
    assert not [k for k in net["state_dict"] if "_orig_mod" in k]
    IncrementalNet.from_checkpoint_state(net)
    assert json.loads((out / "metrics.json").read_text())["last_acc"] >= 0
    torch._dynamo.reset()


def test_compile_option_reads_booleans_and_the_bare_flag():
    assert RunConfig(compile=True).compile == "on"
    assert RunConfig(compile=False).compile == "off"
    assert RunConfig().compile == "auto"
    from cil_train.errors import ConfigError

    with pytest.raises(ConfigError, match="--compile"):
        RunConfig(compile="sometimes")
    old = RunConfig().to_dict()
    old["compile"] = False  # config.json of before --compile took a value
    assert RunConfig.from_dict(old).compile == "off"


@pytest.mark.parametrize("mode,device,images,amp,want", [
    ("on", "cpu", 0, torch.bfloat16, True),
    ("off", "cpu", 10**9, None, False),
    ("auto", "cuda", 10**9, torch.bfloat16, False),  # not measured on GPUs yet
    ("auto", "cpu", compilation.AUTO_MIN_IMAGES - 1, None, False),
    ("auto", "cpu", compilation.AUTO_MIN_IMAGES, None, True),  # float32 (AVX2, AVX-512): compiled wins
    ("auto", "cpu", 10**9, torch.bfloat16, False),  # bf16, with AMX or without: it did not
])
def test_auto_compiles_only_long_float32_cpu_runs_where_compiling_won(mode, device, images, amp, want):
    got, why = compilation.decide(mode, torch.device(device), images, amp)
    assert got is want and why
    if mode == "auto" and device == "cpu" and amp == torch.bfloat16:
        assert "bf16 on a CPU" in why


def test_a_method_that_differentiates_through_a_step_runs_eager(tiny_argv, tmp_path, capsys):
    """bsce-meta's meta-gradient needs create_graph=True, which compiled backward graphs refuse: it runs eager
    (and says so) even under --compile on."""
    out = tmp_path / "meta"
    assert main(tiny_argv(out, "--method", "bsce-meta", "--phases", "2", "--epochs", "1", "--compile", "on")) == 0
    assert "bsce-meta runs eager" in capsys.readouterr().out


def test_planned_images_counts_epochs_memory_and_step_budgets():
    import cil_data

    phases = [SimpleNamespace(num_old=0, train_indices=torch.arange(100)),
              SimpleNamespace(num_old=2, train_indices=torch.arange(30)),
              SimpleNamespace(num_old=4, train_indices=torch.arange(10))]
    scenario = SimpleNamespace(num_phases=3, phase=lambda t: phases[t], train_counts=torch.tensor([60, 40, 20, 10, 6, 4]))
    budget = cil_data.MemoryBudget.per_class(15)
    cfg = SimpleNamespace(base_steps=None, phase_steps=None, base_epochs=4, epochs=2, batch_size=32)
    # phase 0: 4 × 100; phase 1: 2 × (30 + 15 + 15); phase 2: 2 × (10 + 15 + 15 + 15 + 10)
    assert compilation.planned_images(cfg, scenario, budget) == 400 + 120 + 130
    assert compilation.planned_images(cfg, scenario, None) == 400 + 60 + 20
    cfg = SimpleNamespace(base_steps=50, phase_steps=10, base_epochs=None, epochs=2, batch_size=32)
    assert compilation.planned_images(cfg, scenario, budget) == 50 * 32 + 2 * 10 * 32


def test_size_gated_compile_runs_other_batch_sizes_eager():
    """Only the registered (full-batch) sizes go to the compiled graph; a last short batch runs eager, so it
    does not make the compiler specialise again."""
    from cil_models import IncrementalNet

    net = IncrementalNet("resnet8", in_channels=1)
    net.expand(2)
    sizes = {4}
    assert compilation.compile_extractors(net, sizes) == 1
    assert compilation.compile_extractors(net, sizes) == 0  # already compiled
    gate = net.extractors[0]._compiled_call_impl
    calls = []
    gate.compiled = lambda *a, **k: (calls.append(a[0].shape[0]), gate.module._call_impl(*a, **k))[1]
    net.eval()
    with torch.no_grad():
        a = net(torch.randn(4, 1, 16, 16))
        b = net(torch.randn(3, 1, 16, 16))
        sizes.add(3)  # the trainer adds a size when an epoch starts with it
        c = net(torch.randn(3, 1, 16, 16))
    assert calls == [4, 3] and a.shape == (4, 2) and b.shape == c.shape == (3, 2)
    assert not compilation.is_compiled(net.frozen_copy().extractors[0])  # a copy starts eager
