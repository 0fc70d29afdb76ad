"""GR / DGR functional pieces: KD weight, attenuation, the three ratios with their guards, DAKD."""

from __future__ import annotations

import math

import pytest
import torch

import cil_losses as L
from cil_losses.errors import LossArgumentError


def test_kd_weight_and_attenuation():
    assert L.dgr_kd_weight(5000, 1250) == pytest.approx(0.7 * 2.0)
    assert L.dgr_kd_weight(0, 10) == 0.0
    assert L.dgr_attenuation_gamma(300, 100) == pytest.approx(math.exp(-0.75))
    assert L.dgr_attenuation_gamma(300, 100, eta=2.0) == pytest.approx(math.exp(-1.5))
    assert L.dgr_attenuation_gamma(0, 100) == 1.0
    with pytest.raises(LossArgumentError, match="n_new"):
        L.dgr_kd_weight(10, 0)
    with pytest.raises(LossArgumentError, match="n_seen"):
        L.dgr_attenuation_gamma(-1, 3)


@pytest.mark.parametrize("num_old", [0, 1, 3, 6])
@pytest.mark.parametrize("decoupled", [True, False])
def test_class_weights_match_python_loops(num_old, decoupled, gen, ref, close):
    phi = torch.rand(7, generator=gen, dtype=torch.float64) * 5 + 0.1
    gamma = 0.6
    got = L.dgr_class_weights(phi, num_old, gamma, decoupled=decoupled)
    want = torch.tensor(ref.class_weights(phi.tolist(), num_old, gamma, decoupled), dtype=torch.float64)
    close(got, want)
    for cb, tb in [(False, True), (True, False), (False, False)]:
        got = L.dgr_class_weights(phi, num_old, gamma, decoupled=decoupled, class_balance=cb, task_balance=tb)
        want = ref.class_weights(phi.tolist(), num_old, gamma, decoupled, cb, tb)
        close(got, torch.tensor(want, dtype=torch.float64))


def test_class_balance_values():
    phi = torch.tensor([2.0, 4.0, 1.0, 8.0], dtype=torch.float64)
    close = torch.testing.assert_close
    close(L.dgr_class_balance(phi, 0), torch.tensor([0.5, 0.25, 1.0, 0.125], dtype=torch.float64))
    close(L.dgr_class_balance(phi, 2), torch.tensor([1.0, 0.5, 1.0, 0.125], dtype=torch.float64))
    close(L.dgr_class_balance(phi, 2, decoupled=False), L.dgr_class_balance(phi, 0))


def test_zero_guards():
    phi = torch.tensor([0.0, 2.0, 4.0, 0.0, 0.0], dtype=torch.float64)
    alpha = L.dgr_class_balance(phi, 3)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    r_old, r_new = L.dgr_task_balance(phi, 3, 0.5)
    assert float(r_old) == 0.0 and float(r_new) == 0.0            # new classes have no gradient yet
    r_old, r_new = L.dgr_task_balance(torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), 2, 0.5)
    assert float(r_old) == 1.0 and float(r_new) == 1.0            # ρ = +inf when mean_old Φ = 0
    assert torch.isfinite(L.dgr_class_weights(torch.zeros(4, dtype=torch.float64), 2, 0.5)).all()
    beta = L.dgr_loss_balance(torch.ones(3), torch.tensor([1.0, 2.0, 2.0]), torch.zeros(2))
    assert float(beta) == 1.0
    beta = L.dgr_loss_balance(torch.tensor([1.0, 0.5, 1.0]), torch.tensor([2.0, 2.0, 2.0]), torch.tensor([3.0, 4.0]))
    assert float(beta) == pytest.approx(3.0 / 5.0)


def test_task_balance_attenuation():
    phi = torch.tensor([4.0, 4.0, 2.0, 2.0], dtype=torch.float64)  # ρ = 0.5
    r_old, r_new = L.dgr_task_balance(phi, 2, 0.5)
    assert float(r_old) == pytest.approx(0.5) and float(r_new) == pytest.approx(0.25)
    phi = torch.tensor([1.0, 1.0, 4.0, 4.0], dtype=torch.float64)  # ρ = 4
    r_old, r_new = L.dgr_task_balance(phi, 2, 0.5)
    assert float(r_old) == 1.0 and float(r_new) == 1.0
    with pytest.raises(LossArgumentError, match="num_old"):
        L.dgr_task_balance(phi, 0, 0.5)


@pytest.mark.parametrize(
    "lost", [[30.0, 0.0, 12.0, 480.0, 3.0], [0.0] * 5, [5.0] * 5, [0.0, 0.0, 7.0, 0.0, 0.0]],
    ids=["imbalanced", "nothing-lost", "uniform", "one-class"],
)
def test_dakd_matches_reference(lost, gen, rand, ref, grad_of, close):
    s, t = rand(gen, 6, 5, grad=True), rand(gen, 6, 5, grad=True)
    got = L.dakd_loss(s, t, lost, 2.0)
    want = ref.dakd(s, t, lost, 2.0)
    close(got, want)
    for g, w in zip(grad_of(got, s, t), grad_of(want, s, t)):
        close(g, w)


def test_dakd_guards(gen, rand, close):
    s, t = rand(gen, 4, 3), rand(gen, 4, 3)
    close(L.dakd_loss(s, t, [0, 0, 0]), L.kd_loss(s, t, 2.0))           # ‖ℓ‖ = 0: plain KD
    one = L.dakd_loss(s[:, :1], t[:, :1], [12.0])                           # one old class: KD over 1 class = 0
    assert torch.isfinite(one) and float(one) == pytest.approx(0.0, abs=1e-12)
    huge = L.dakd_loss(s * 1e4, t * 1e4, torch.tensor([3.0, 0.0, 9.0]))
    assert torch.isfinite(huge)
    with pytest.raises(LossArgumentError, match="lost_counts"):
        L.dakd_loss(s, t, [1.0, -1.0, 0.0])
    with pytest.raises(LossArgumentError, match="lost_counts"):
        L.dakd_loss(s, t, [1.0, 2.0])
    with pytest.raises(LossArgumentError, match="same shape"):
        L.dakd_loss(s, t[:, :2], [1.0, 2.0, 3.0])


def test_regularized_softmax_offsets():
    off = L.regularized_softmax_offsets([10.0, 30.0, 0.0])
    torch.testing.assert_close(off[:2], torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64))
    assert off[2] == -math.inf and off.dtype == torch.float64
    assert L.regularized_softmax_offsets([10.0, 30.0, 0.0], min_fraction=1e-12)[2] == pytest.approx(math.log(1e-12))
    assert L.regularized_softmax_offsets([10.0, 30.0], dtype=torch.float32).dtype == torch.float32
    with pytest.raises(LossArgumentError, match="class_counts"):
        L.regularized_softmax_offsets([0.0, 0.0])


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("H", [0.0, 0.37, 1.0])
def test_dakd_function_gradcheck(H, reduction):
    from cil_losses.dgr import DAKDFunction

    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.rand(4, dtype=torch.float64)
    h = torch.tensor(H, dtype=torch.float64)
    upstream = torch.randn(3 if reduction == "none" else (), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: DAKDFunction.apply(a, b, v, h, 2.0, reduction) * upstream, (s, t))
    assert torch.autograd.gradcheck(lambda a: DAKDFunction.apply(a, t.detach(), v, h, 2.0, reduction) * upstream, (s,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dakd_reductions_with_a_frozen_teacher_match_reference(reduction, gen, rand, ref, close):
    """The training path (teacher without gradient): per-sample values, sum and mean, and their gradients."""
    s, t = rand(gen, 6, 5, grad=True), rand(gen, 6, 5)
    lost = [30.0, 0.0, 12.0, 480.0, 3.0]
    got = L.dakd_loss(s, t, lost, 2.0, reduction=reduction)
    per_sample = torch.stack([ref.dakd(s[i : i + 1], t[i : i + 1], lost, 2.0) for i in range(6)])
    want = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    close(got, want)
    upstream = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    (g_got,) = torch.autograd.grad((got * upstream).sum(), s)
    (g_want,) = torch.autograd.grad((want * upstream).sum(), s)
    close(g_got, g_want)


@pytest.mark.parametrize("scale, offset", [(3.0, 0.0), (3.0, 300.0), (30.0, 0.0), (1e4, 0.0)])
def test_dakd_large_and_shifted_logits_match_reference(scale, offset, gen, ref, close):
    """Large common offsets and saturated logits (±1e4): float64 to the usual tolerance, float32 to float32's."""
    s = (torch.randn(8, 40, generator=gen, dtype=torch.float64) * scale + offset).requires_grad_()
    t = torch.randn(8, 40, generator=gen, dtype=torch.float64) * scale + offset
    lost = torch.randint(0, 40, (40,), generator=gen).double()
    want = ref.dakd(s, t, lost, 2.0)
    (g_want,) = torch.autograd.grad(want, s)
    got = L.dakd_loss(s, t, lost, 2.0)
    (g_got,) = torch.autograd.grad(got, s)
    close(got, want)
    close(g_got, g_want)
    s32 = s.detach().float().requires_grad_()
    got32 = L.dakd_loss(s32, t.float(), lost.float(), 2.0)
    (g32,) = torch.autograd.grad(got32, s32)
    torch.testing.assert_close(got32.double(), want, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(g32.double(), g_want, atol=1e-6, rtol=1e-4)


def test_dakd_lost_counts_validated_once_per_tensor_version(gen, rand, close, monkeypatch):
    from cil_losses import dgr

    calls = []
    real = dgr._lost_counts
    monkeypatch.setattr(dgr, "_lost_counts", lambda *args: calls.append(1) or real(*args))
    s, t = rand(gen, 4, 3), rand(gen, 4, 3)
    lost = torch.tensor([3.0, 0.0, 9.0], dtype=torch.float64)
    first = L.dakd_loss(s, t, lost)
    assert torch.equal(L.dakd_loss(s, t, lost), first) and len(calls) == 1     # second call: cached
    lost[1] = 5.0                                                                # in place: seen
    changed = L.dakd_loss(s, t, lost)
    assert len(calls) == 2
    close(changed, L.dakd_loss(s, t, [3.0, 5.0, 9.0]))
    lost[0] = -1.0                                                               # and validated again
    with pytest.raises(LossArgumentError, match="lost_counts"):
        L.dakd_loss(s, t, lost)
    lost[0] = float("nan")
    with pytest.raises(LossArgumentError, match="lost_counts"):
        L.dakd_loss(s, t, lost)
    other = torch.tensor([3.0, 5.0, 9.0], dtype=torch.float64)                  # another tensor, same values
    close(L.dakd_loss(s, t, other), L.dakd_loss(s, t, [3.0, 5.0, 9.0]))
    close(L.dakd_loss(s.float(), t.float(), other), L.dakd_loss(s, t, other).float(), atol=1e-6, rtol=1e-6)


def test_class_weights_reject_an_empty_new_group_and_accept_a_mask():
    phi = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    with pytest.raises(LossArgumentError, match="num_old"):
        L.dgr_class_weights(phi, 3, 0.5)
    mask = torch.tensor([True, True, False])
    torch.testing.assert_close(L.dgr_class_weights(phi, 2, 0.5, is_old=mask), L.dgr_class_weights(phi, 2, 0.5))
