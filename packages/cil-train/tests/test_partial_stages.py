"""Stages that train a part of the network back-propagate into that part only, and leave every parameter's
``requires_grad`` as they found it."""

from __future__ import annotations

import pytest

from cil_train import loop
from cil_train.cli import main


@pytest.mark.parametrize("method, stage_name, extra", [
    ("lucir", "cbf", ("--lucir-cbf", "--lucir-cbf-epochs", "1")),  # the head's blocks only
    ("der", "classifier", ("--der-bias-correction", "balanced", "--der-balanced-epochs", "1")),  # the classifier
    ("bic", "bias-correction", ("--bic-bias-epochs", "1")),  # the newest bias pair only
    ("podnet", "finetune", ("--podnet-finetune-epochs", "1")),  # the head's blocks only (on by default)
])
def test_a_partial_stage_computes_gradients_for_its_parameters_only(tiny, monkeypatch, method, stage_name, extra):
    steps, stages = [], []
    train_step, run_stage = loop.Trainer._train_step, loop.Trainer._run_stage

    def spy_step(self, ctx, pos, loss_fn, params, aug_gen):
        for p in ctx.model.parameters():  # a gradient present after the step was computed by it
            p.grad = None
        out = train_step(self, ctx, pos, loss_fn, params, aug_gen)
        trained = {id(p) for p in params}
        computed = {n for n, p in ctx.model.named_parameters() if p.grad is not None}
        allowed = {n for n, p in ctx.model.named_parameters() if id(p) in trained}
        steps.append((ctx.stage.name, computed, allowed))
        return out

    def spy_stage(self, ctx, k, stage, *args, **kwargs):
        stage.trainable(ctx.model)  # what the method itself sets for the stage (DER freezes every extractor)
        before = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
        run_stage(self, ctx, k, stage, *args, **kwargs)
        after = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
        stages.append((stage.name, before, after))

    monkeypatch.setattr(loop.Trainer, "_train_step", spy_step)
    monkeypatch.setattr(loop.Trainer, "_run_stage", spy_stage)
    argv, _ = tiny("--method", method, "--epochs", "1", *extra)
    assert main(argv) == 0
    partial = [(computed, allowed) for name, computed, allowed in steps if name == stage_name]
    assert partial, f"no {stage_name} step ran"
    for name, computed, allowed in steps:
        assert computed and computed <= allowed, (name, sorted(computed - allowed)[:5])
    for computed, allowed in partial:  # far from the whole network: the backbone is not differentiated
        assert not any("extractor" in n or "backbone" in n for n in computed), sorted(computed)[:5]
    for name, before, after in stages:
        assert before == after, (name, sorted(before ^ after)[:5])


def test_skipping_the_unused_backward_changes_no_result(tiny, monkeypatch, strip_timings):
    import contextlib
    import json

    argv, out = tiny("--method", "podnet", "--epochs", "1", "--podnet-finetune-epochs", "2", out="frozen")
    assert main(argv) == 0
    monkeypatch.setattr(loop, "frozen_outside", lambda model, params: contextlib.nullcontext())
    argv, out_all = tiny("--method", "podnet", "--epochs", "1", "--podnet-finetune-epochs", "2", out="whole")
    assert main(argv) == 0
    frozen, whole = (strip_timings(json.loads((o / "metrics.json").read_text())) for o in (out, out_all))
    assert frozen == whole
