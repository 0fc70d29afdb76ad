"""LUCIR and PODNet and their BalancedS-CE variants: each -bsce variant differs from its base in exactly two
places (the classification term and the balanced finetuning), checked on the classes and on real losses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import cil_losses as L
from cil_train import RunConfig
from cil_train.methods import Batch
from cil_train.methods.lucir import LUCIR, LUCIRBalanced, LUCIRRelaxed
from cil_train.methods.podnet import PODNet, PODNetBalanced, PODNetRelaxed

PAIRS = [(LUCIR, LUCIRBalanced, {"lucir_cbf": True}), (PODNet, PODNetBalanced, {})]
HOOKS = ("build_network", "make_teacher", "grow_network", "held_out_per_class", "start_phase", "stages", "loss",
         "after_step", "end_phase", "phase_lr", "main_stage")


@pytest.mark.parametrize(("base", "variant", "_"), PAIRS, ids=["lucir", "podnet"])
def test_bsce_variant_overrides_nothing_but_two_switches(base, variant, _):
    for hook in HOOKS:
        assert getattr(variant, hook) is getattr(base, hook), hook
    assert variant.Options is base.Options and variant.evaluation == base.evaluation
    # plain_base is set on every class (it is not inherited, see Method); both are False here
    assert variant.plain_base is base.plain_base is False
    own = {k for k in vars(variant) if not k.startswith("__")} - {"plain_base"}
    assert own == {"name", "summary", "position", "classification", "balanced_finetuning"}
    assert (base.classification, variant.classification) in (("ce", "bsce"), ("nca", "bsce"))
    assert base.balanced_finetuning and not variant.balanced_finetuning


def _phase_ctx(method, head_kind):
    torch.manual_seed(0)
    model = method.build_network(1)
    model.expand(2)
    teacher = model.frozen_copy()
    model.expand(2)
    x = torch.randn(6, 1, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 2, 3])
    counts = torch.tensor([2.0, 2.0, 30.0, 10.0])
    return SimpleNamespace(model=model, net=model, teacher=teacher, frozen_teacher=lambda: teacher, t=1, num_old=2,
                           num_new=2, num_seen=4, class_counts=counts, dataset_mean_count=20.0), \
        Batch(x=x, y=y, is_memory=y < 2)


@pytest.mark.parametrize(("base", "variant", "extra"), PAIRS, ids=["lucir", "podnet"])
def test_bsce_variant_changes_only_the_classification_term(base, variant, extra):
    run_base = RunConfig(method=base.name, backbone="resnet8", method_options=extra)
    run_variant = RunConfig(method=variant.name, backbone="resnet8", method_options=extra)
    a, b = base(run_base), variant(run_variant)
    ctx, batch = _phase_ctx(a, None)
    loss_a, fig_a = a.loss(ctx, batch)
    loss_b, fig_b = b.loss(ctx, batch)
    cls = "ce" if base is LUCIR else "cls"
    for key in fig_a:
        if key != cls:
            assert torch.equal(fig_a[key], fig_b[key]), key  # the distillation terms are identical
    # the variant's classification term is BalancedS-CE on the same scaled logits
    model = ctx.model
    with torch.no_grad():
        feats = model.features(batch.x)
        scaled = model.head(feats).float()
    want = L.balanced_softmax_cross_entropy(scaled, batch.y, ctx.class_counts)
    assert torch.allclose(fig_b[cls], want, atol=1e-6)
    if base is LUCIR:
        assert torch.allclose(fig_a[cls], F.cross_entropy(scaled, batch.y), atol=1e-6)
    # the same main stage; the base adds its finetuning after the memory update
    stages_a, stages_b = a.stages(SimpleNamespace(t=1)), b.stages(SimpleNamespace(t=1))
    assert len(stages_a) == 2 and stages_a[1].after_memory and len(stages_b) == 1
    assert stages_a[0].name == stages_b[0].name == "main" and stages_a[0].epochs == stages_b[0].epochs
    assert stages_a[0].lr == stages_b[0].lr and stages_a[0].parameters is stages_b[0].parameters


@pytest.mark.parametrize("method", [LUCIRRelaxed, PODNetRelaxed], ids=["lucir", "podnet"])
def test_relaxed_variants_use_eps_for_the_old_classes(method):
    m = method(RunConfig(method=method.name, backbone="resnet8", method_options={"relaxed_eps": 0.5}))
    ctx, batch = _phase_ctx(m, None)
    _, figures = m.loss(ctx, batch)
    with torch.no_grad():
        scaled = ctx.model.head(ctx.model.features(batch.x)).float()
    want = L.balanced_softmax_cross_entropy(scaled, batch.y, ctx.class_counts, num_old=2, eps=0.5)
    key = "ce" if method is LUCIRRelaxed else "cls"
    assert torch.allclose(figures[key], want, atol=1e-6)
    assert m.memory == "none"


def test_lucir_freezes_old_rows_and_imprints_new_ones():
    from cil_train.methods.cosine_common import trainable_without_old_rows

    m = LUCIR(RunConfig(method="lucir", backbone="resnet8"))
    net = m.build_network(1)
    net.expand(2)
    net.expand(2)
    trainable = {id(p) for p in trainable_without_old_rows(net)}
    assert id(net.head.blocks[0].weight) not in trainable and id(net.head.blocks[1].weight) in trainable
    assert id(net.head.scale) in trainable
    # the last ReLU is removed: features can be negative
    assert bool((net.features(torch.randn(8, 1, 16, 16)) < 0).any())


def test_lucir_cbf_stage_is_the_official_ft_flag_2():
    """HOU's cbf_class_incremental_cosine_*.py, default --ft_flag 2: fc1 and fc2 train (σ in no group), the
    backbone at lr 0 with its batch norms in eval mode (fix_bn), 20 epochs at 0.01, ×0.1 at epoch 10."""
    m = LUCIR(RunConfig(method="lucir", backbone="resnet8", method_options={"lucir_cbf": True}))
    net = m.build_network(1)
    net.expand(2)
    net.expand(2)
    main_stage, cbf = m.stages(SimpleNamespace(t=1))
    assert main_stage.train_mode and not cbf.train_mode and cbf.after_memory
    assert {id(p) for p in cbf.trainable(net)} == {id(p) for b in net.head.blocks for p in b.parameters()}
    assert id(net.head.scale) not in {id(p) for p in cbf.trainable(net)}
    assert (cbf.epochs, cbf.lr, cbf.lr_steps, cbf.lr_decay, cbf.schedule) == (20, 0.01, (10,), 0.1, "step")

