"""kd_loss, task_wise_kd, output_coordination_kd, segmented_kd against plain references."""

from __future__ import annotations

import pytest
import torch

import cil_losses as L
from cil_losses.distillation import SegmentedKDFunction
from cil_losses.errors import LossArgumentError, LossTypeError
from cil_losses.segments import segment_plan

LAYOUTS = [[0, 3, 6, 9], [0, 5, 7, 9], [0, 1, 2, 3, 4], [0, 9], [0, 1, 3, 4, 6, 7, 9]]


@pytest.mark.parametrize("t_squared", [False, True])
@pytest.mark.parametrize("T", [1.0, 2.0, 4.5])
def test_kd_loss_matches_soft_target_ce(T, t_squared, gen, rand, ref, grad_of, close):
    a, b = rand(gen, 6, 7, grad=True), rand(gen, 6, 7, grad=True)
    got = L.kd_loss(a, b, T, t_squared=t_squared)
    want = ref.soft_ce(a, b, T) * (T * T if t_squared else 1.0)
    close(got, want)
    for g, w in zip(grad_of(got, a, b), grad_of(want, a, b)):
        close(g, w)


def test_kd_loss_reductions_and_kl_relation(gen, rand, ref, close):
    a, b = rand(gen, 5, 4), rand(gen, 5, 4)
    per = L.kd_loss(a, b, 2.0, reduction="none")
    assert per.shape == (5,)
    close(per.sum(), L.kd_loss(a, b, 2.0, reduction="sum"))
    close(per.mean(), L.kd_loss(a, b, 2.0))
    q = torch.softmax(b / 2, 1)
    entropy = -(q * q.log()).sum(1).mean()
    close(L.kd_loss(a, b, 2.0) - entropy, ref.kl_div(a, b, 2.0))  # soft-target CE = KL + teacher entropy


def test_kd_loss_is_twice_differentiable():
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: L.kd_loss(x, b, 2.0, t_squared=True), (a,))


def test_kd_loss_argument_errors():
    with pytest.raises(LossArgumentError, match="same shape"):
        L.kd_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(LossArgumentError, match="T must be"):
        L.kd_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(LossTypeError, match="logits"):
        L.kd_loss(torch.ones(2, 3, dtype=torch.long), torch.randn(2, 3))
    with pytest.raises(LossArgumentError, match="reduction"):
        L.kd_loss(torch.randn(2, 3), torch.randn(2, 3), reduction="avg")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda b: "-".join(map(str, b)))
@pytest.mark.parametrize("t_squared", [True, False])
def test_task_wise_kd_matches_loop(layout, t_squared, gen, rand, ref, grad_of, close):
    s, t = rand(gen, 5, layout[-1] + 4, grad=True), rand(gen, 5, layout[-1], grad=True)
    got = L.task_wise_kd(s, t, layout, 2.0, t_squared=t_squared)
    want = ref.task_wise_kd_loop(s, t, layout, 2.0, t_squared=t_squared)
    close(got, want)
    gs, gt = grad_of(got, s, t)
    ws, wt = grad_of(want, s, t)
    close(gs, ws)
    close(gt, wt)
    assert torch.all(gs[:, layout[-1]:] == 0)  # the student's new-class columns are not distilled


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda b: "-".join(map(str, b)))
def test_output_coordination_matches_loop(layout, gen, rand, ref, grad_of, close):
    s, t = rand(gen, 4, layout[-1] + 2, grad=True), rand(gen, 4, layout[-1], grad=True)
    got = L.output_coordination_kd(s, t, layout, 2.0)
    want = ref.output_coordination_loop(s, t, layout, 2.0)
    close(got, want)
    for g, w in zip(grad_of(got, s, t), grad_of(want, s, t)):
        close(g, w)


@pytest.mark.parametrize("kl", [True, False])
@pytest.mark.parametrize("layout", [[0, 2, 4, 6], [0, 1, 3, 4, 6, 7, 9]])
def test_segmented_kd_gradcheck(kl, layout):
    plan = segment_plan(tuple(layout))
    s = torch.randn(3, layout[-1], dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, layout[-1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: SegmentedKDFunction.apply(a, b, plan, 2.0, 4.0, kl), (s, t))


def test_one_class_per_task_distils_nothing(gen, rand):
    s, t = rand(gen, 3, 4, grad=True), rand(gen, 3, 4)
    loss = L.task_wise_kd(s, t, [0, 1, 2, 3, 4])
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(s.grad, torch.zeros_like(s.grad), atol=1e-12)


def test_no_old_task_gives_an_attached_zero():
    s = torch.randn(3, 4, requires_grad=True)
    loss = L.task_wise_kd(s, torch.randn(3, 0), [0])
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(s.grad == 0)


def test_huge_logits_are_finite(ref, close):
    g = torch.Generator().manual_seed(3)
    s = ((torch.rand(4, 9, generator=g) > 0.5).double() * 2 - 1) * 1e4
    t = ((torch.rand(4, 9, generator=g) > 0.5).double() * 2 - 1) * 1e4
    s.requires_grad_(True)
    for fn in (L.task_wise_kd, L.output_coordination_kd):
        loss = fn(s, t, [0, 3, 6, 9])
        (g_s,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(g_s).all()
    close(L.task_wise_kd(s, t, [0, 3, 6, 9]), ref.task_wise_kd_loop(s, t, [0, 3, 6, 9]))


def test_batch_of_one(ref, close):
    s, t = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    close(L.task_wise_kd(s, t, [0, 2, 6]), ref.task_wise_kd_loop(s, t, [0, 2, 6]))


def test_reduction_none_is_per_sample(ref, close):
    s, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    per = L.task_wise_kd(s, t, [0, 2, 6], reduction="none")
    assert per.shape == (4,)
    close(per.mean(), ref.task_wise_kd_loop(s, t, [0, 2, 6]))


def test_too_few_columns_is_an_error():
    with pytest.raises(LossArgumentError, match="teacher_logits has 4 columns"):
        L.task_wise_kd(torch.randn(2, 6), torch.randn(2, 4), [0, 3, 6])
    with pytest.raises(LossArgumentError, match="same batch size"):
        L.task_wise_kd(torch.randn(2, 6), torch.randn(3, 6), [0, 3, 6])
