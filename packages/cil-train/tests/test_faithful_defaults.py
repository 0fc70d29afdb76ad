"""Defaults fixed by the faithful-protocols review (METHODS.md §1, §5): they must stay as the papers' code.

- Meta BalancedS-CE updates α with Algorithm 1's unit step, so α actually moves in a short run (with the
  round-1 step of 0.01 it stayed at its clamp); the Adam option follows Adam's update rule exactly.
- WA clamps its aligning factor γ ≤ 1 by default (the authors' code); ``--no-wa-clamp`` is PyCIL's form.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from cil_models import IncrementalLinear
from cil_train import RunConfig
from cil_train.cli import main
from cil_train.methods.bsce_meta import MetaBalancedSoftmax
from cil_train.methods.wa import WeightAligning


def test_meta_alpha_uses_algorithm_one_unit_step_by_default():
    method = MetaBalancedSoftmax(RunConfig(method="bsce-meta", backbone="resnet8"))
    assert method.options.meta_lr == 1.0 and method.options.meta_optimizer == "sgd"
    assert method._alpha_step(0.003) == pytest.approx(0.003)  # α ← α − ∇_α CE, no learning rate


def test_meta_alpha_adam_option_matches_adams_update_rule():
    method = MetaBalancedSoftmax(RunConfig(method="bsce-meta", backbone="resnet8",
                                           method_options={"meta_optimizer": "adam", "meta_adam_lr": 0.05}))
    grads = [0.002, -0.001, 0.004, 0.0005]
    m = v = 0.0
    for t, g in enumerate(grads, 1):  # Kingma & Ba, Algorithm 1, written out
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        expected = 0.05 * (m / (1 - 0.9**t)) / (math.sqrt(v / (1 - 0.999**t)) + 1e-8)
        assert method._alpha_step(g) == pytest.approx(expected, rel=1e-12)
    assert method.state_dict()["adam"][2] == 4


def _alpha_travel(tmp_path, *extra: str) -> list[dict]:
    out = tmp_path / ("run" + "".join(extra).replace("-", "_"))
    argv = ["--method", "bsce-meta", "--data", "embedded", "--backbone", "resnet8", "--phases", "5", "--epochs", "2",
            "--meta-interval", "1", "--threads", "1", "--progress", "none", "--no-plots", "--seed", "1",
            "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())["phases"]


def test_meta_alpha_moves_in_a_short_run_on_the_embedded_data(tmp_path):
    """α's path (Σ|Δα| over its updates) exceeds 0.05 with the default step, and not with round 1's 0.01."""
    phases = _alpha_travel(tmp_path)
    travelled = sum(p["alpha_path"] for p in phases[1:])
    assert travelled > 0.05, [(p["alpha"], p["alpha_path"]) for p in phases]
    assert all(1e-3 <= p["alpha_min"] <= p["alpha"] <= 1.0 for p in phases[1:])
    small = _alpha_travel(tmp_path, "--meta-lr", "0.01")
    assert sum(p["alpha_path"] for p in small[1:]) < travelled / 20


def _head_with_small_new_rows():
    head = IncrementalLinear(4)
    head.expand(3, weight=torch.ones(3, 4), bias=torch.zeros(3))
    head.expand(2, weight=torch.full((2, 4), 0.5), bias=torch.zeros(2))  # half the old rows' norm: γ = 2
    return SimpleNamespace(model=SimpleNamespace(head=head), num_old=3), head


def test_wa_clamps_gamma_to_one_by_default():
    method = WeightAligning(RunConfig(method="wa", backbone="resnet8"))
    assert method.options.wa_clamp
    ctx, head = _head_with_small_new_rows()
    assert method.end_phase(ctx)["wa_gamma"] == 1.0
    assert torch.equal(head.full_weight()[3:], torch.full((2, 4), 0.5))  # new rows left as they were
    unclamped = WeightAligning(RunConfig(method="wa", backbone="resnet8", method_options={"wa_clamp": False}))
    ctx, head = _head_with_small_new_rows()
    assert unclamped.end_phase(ctx)["wa_gamma"] == pytest.approx(2.0)
    assert torch.allclose(head.full_weight()[3:], torch.ones(2, 4))


def test_wa_without_aligning_leaves_the_head_as_trained():
    """--no-wa-align: WA's un-aligned baseline (CE + KD alone), the other side of the claim that aligning helps."""
    method = WeightAligning(RunConfig(method="wa", backbone="resnet8", method_options={"wa_align": False,
                                                                                     "wa_clamp": False}))
    ctx, head = _head_with_small_new_rows()
    before = head.full_weight().clone()
    assert method.end_phase(ctx) == {}
    assert torch.equal(head.full_weight(), before)
    assert WeightAligning(RunConfig(method="wa", backbone="resnet8")).options.wa_align


def test_ssil_defaults_follow_the_official_trainer():
    from cil_train.methods.ssil import SSIL
    from cil_train.stages import RatioPreservingBatches, ShuffleBatches

    method = SSIL(RunConfig(method="ssil", backbone="resnet8", epochs=25, batch_size=32))
    o = method.options
    assert (o.ssil_kd, o.ssil_separated, o.ssil_ratio_preserving, o.ssil_weight_decay) == ("task", True, True, 1e-4)
    y = torch.arange(300) % 3
    data = SimpleNamespace(train=torch.arange(300), is_memory=torch.arange(300) >= 260, y=y)
    ctx = SimpleNamespace(t=0, data=data, generator=torch.Generator().manual_seed(0), run=method.run)
    (base,) = method.stages(ctx)
    assert base.batch_size == 128 and base.weight_decay == 1e-4 and base.schedule == "step"
    assert base.lr_steps == (10, 20) and base.lr == 0.1
    batches = list(base.sampler(ctx))
    assert [len(b) for b in batches] == [128, 128]  # 300 images: the last 44 are dropped
    ctx.t = 2
    (stage,) = method.stages(ctx)
    assert stage.lr == pytest.approx(0.1 / 3) and stage.lr_steps == (10, 20)
    sampler = stage.sampler(ctx)
    assert isinstance(sampler, RatioPreservingBatches) and [len(b) for b in sampler] == [160, 160]  # 260 new: 2
    few = SimpleNamespace(train=torch.arange(100), is_memory=torch.arange(100) >= 90, y=y[:100])
    ctx.data = few  # 90 new images < B_n: the one short batch is kept, or the phase would not train at all
    assert [len(b) for b in stage.sampler(ctx)] == [122]
    assert len(list(ShuffleBatches(torch.arange(50), 128, torch.Generator(), drop_last=True))) == 1


def test_ssil_old_tkd_switch_is_read_as_what_it_computed():
    from cil_train.methods.ssil import SSIL

    assert SSIL.options_from_dict({"ssil_tkd": False}).ssil_kd == "global"
    assert SSIL.options_from_dict({"ssil_tkd": True}).ssil_kd == "task"


def test_ssil_round_one_form_is_still_available():
    from cil_train.methods.ssil import SSIL
    from cil_train.stages import Stage

    run = RunConfig(method="ssil", backbone="resnet8", epochs=25, batch_size=32, method_options={
        "ssil_drop_last": False, "ssil_own_base": False, "ssil_weight_decay": 5e-4, "ssil_schedule": "run"})
    method = SSIL(run)
    data = SimpleNamespace(train=torch.arange(300), is_memory=torch.arange(300) >= 260, y=torch.arange(300) % 3)
    ctx = SimpleNamespace(t=0, data=data, generator=torch.Generator().manual_seed(0), run=run)
    (base,) = method.stages(ctx)
    assert base == Stage.from_run(run, t=0, lr=0.1)
    ctx.t = 1
    (stage,) = method.stages(ctx)
    assert stage.weight_decay == 5e-4 and stage.schedule == "cosine"
    assert [len(b) for b in stage.sampler(ctx)] == [160, 160, 36]  # 260 new: the short batch kept


@pytest.mark.parametrize("method", [("finetune",), ("ssil", "--ssil-batch-new", "8", "--ssil-batch-memory", "4")])
def test_phase_steps_give_every_method_the_same_number_of_steps(tiny, monkeypatch, method):
    from cil_train import loop

    steps: dict[int, int] = {}
    batches: dict[int, int] = {}
    original_step, original_budget = loop.Trainer._train_step, loop.Trainer._step_budget

    def count(self, ctx, *args, **kwargs):
        steps[ctx.t] = steps.get(ctx.t, 0) + 1
        return original_step(self, ctx, *args, **kwargs)

    def budget(self, ctx, stage, n):
        batches[ctx.t] = n
        return original_budget(self, ctx, stage, n)

    monkeypatch.setattr(loop.Trainer, "_train_step", count)
    monkeypatch.setattr(loop.Trainer, "_step_budget", budget)
    argv, out = tiny("--method", *method, "--phase-steps", "9", "--base-steps", "5")
    assert main(argv) == 0
    for t, n in steps.items():
        target = 5 if t == 0 else 9
        assert abs(n - target) <= batches[t] / 2 and n % batches[t] == 0, (t, n, batches[t])
    losses = [len(p["epoch_losses"]) for p in json.loads((out / "metrics.json").read_text())["phases"]]
    assert losses == [steps[t] // batches[t] for t in range(3)]


def test_meta_update_reuses_the_steps_teacher_forward(tmp_path, monkeypatch):
    """A step that updates α forwards the teacher once: the look-ahead and the training loss share its logits
    (they were two forwards of the same frozen network on the same batch)."""
    from cil_train.context import PhaseContext

    counts = {"teacher": 0, "steps with a teacher": 0}
    teacher_logits, loss = PhaseContext.teacher_logits, MetaBalancedSoftmax.loss

    def counted_teacher(self, x):
        counts["teacher"] += 1
        return teacher_logits(self, x)

    def counted_loss(self, ctx, batch):
        counts["steps with a teacher"] += ctx.num_old > 0
        return loss(self, ctx, batch)

    monkeypatch.setattr(PhaseContext, "teacher_logits", counted_teacher)
    monkeypatch.setattr(MetaBalancedSoftmax, "loss", counted_loss)
    argv = ["--method", "bsce-meta", "--data", "embedded", "--backbone", "resnet8", "--phases", "2", "--epochs", "1",
            "--meta-interval", "1", "--threads", "1", "--progress", "none", "--no-plots", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert counts["steps with a teacher"] > 0 and counts["teacher"] == counts["steps with a teacher"], counts
