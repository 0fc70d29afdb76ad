"""The findings of the independent check before cil-losses 1.0 (issue 18), one test group per finding.

Every test here failed on the code before 1.0 and passes now. References are written in plain float64
Python (``math``), not with the functions under test.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import cil_losses as L
from cil_losses import balanced
from cil_losses import nn as LN


@pytest.fixture(params=["unfused", "fused"])
def path(request, monkeypatch):
    """Both paths of the shifted cross-entropy: ``F.cross_entropy(z + o)`` and the fused CPU Function."""
    monkeypatch.setattr(balanced, "FUSED_MIN_NUMEL", 0 if request.param == "fused" else 10**12)
    return request.param


def _ce64(z_row, lam, y):
    """``−log(λ_y e^{z_y} / Σ_j λ_j e^{z_j})`` in float64 Python, classes with λ = 0 left out of the sum."""
    terms = [(zj + math.log(lj)) for zj, lj in zip(z_row, lam) if lj > 0]
    m = max(terms)
    lse = m + math.log(math.fsum(math.exp(t - m) for t in terms))
    return lse - (z_row[y] + math.log(lam[y]))


# --------------------------------------------------------------------------- 1. λ_c = 0 is exact
def test_zero_weight_removes_the_class_from_the_normaliser(path):
    """A class of weight 0 with a logit 1e4 above the others takes no mass: the exact loss is 0."""
    for dtype in (torch.float64, torch.float32):
        z = torch.tensor([[1e4, 0.0], [1e4, 3.0]], dtype=dtype, requires_grad=True)
        y = torch.tensor([1, 1])
        for loss in (
            L.balanced_softmax_cross_entropy(z, y, [0.0, 5.0]),                       # a class with count 0
            L.balanced_softmax_cross_entropy(z, y, [7.0, 5.0], num_old=1, eps=0.0),   # Relaxed ε = 0
            L.balanced_softmax_cross_entropy(z, y, [7.0, 5.0], num_old=1, alpha=0.0),  # α = 0
            LN.BalancedSoftmaxCE([0.0, 5.0])(z, y),
            L.logit_adjusted_cross_entropy(z, y, L.regularized_softmax_offsets([0.0, 5.0])),
        ):
            assert loss.item() == 0.0
            (grad,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(grad).all() and grad.abs().max().item() == 0.0


def test_zero_weight_offsets_are_minus_infinity():
    assert L.balanced_softmax_offsets([0.0, 5.0])[0].item() == -math.inf
    assert L.balanced_softmax_offsets([4.0, 5.0], num_old=1, eps=0.0)[0].item() == -math.inf
    assert L.regularized_softmax_offsets([0.0, 5.0])[0].item() == -math.inf
    with pytest.raises(L.LossArgumentError, match="every class weight"):
        L.balanced_softmax_offsets([0.0, 0.0])


def test_zero_weight_values_and_gradients_match_float64_formula_on_both_paths(path):
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(5, 6, generator=g, dtype=torch.float64) * 4).requires_grad_()
    z.data[:, 0] += 50.0                                      # the zero-weight class dominates the raw logits
    counts = [0.0, 3.0, 7.0, 1.0, 0.0, 11.0]
    y = torch.tensor([1, 2, 3, 5, 2])
    loss = L.balanced_softmax_cross_entropy(z, y, counts, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)
    for i in range(5):
        row = z[i].tolist()
        assert loss[i].item() == pytest.approx(_ce64(row, counts, int(y[i])), rel=1e-14, abs=1e-14)
        terms = [math.exp(row[c] + math.log(counts[c])) if counts[c] > 0 else 0.0 for c in range(6)]
        total = math.fsum(terms)
        for c in range(6):
            want = terms[c] / total - (1.0 if c == y[i] else 0.0)
            assert grad[i, c].item() == pytest.approx(want, abs=1e-14)


def test_zero_weight_tensor_alpha_has_finite_gradients():
    """Meta BalancedS-CE: an old class with no sample and a learned α; also α = 0 itself."""
    z = torch.tensor([[2.0, 1e4, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    for value in (0.3, 0.0):
        alpha = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        loss = L.balanced_softmax_cross_entropy(z, torch.tensor([2]), [4.0, 0.0, 6.0, 2.0], num_old=2, alpha=alpha)
        g_z, g_alpha = torch.autograd.grad(loss, (z, alpha))
        assert torch.isfinite(loss) and torch.isfinite(g_z).all() and torch.isfinite(g_alpha)
        lam = [4.0 * value, 0.0, 6.0, 2.0]
        assert loss.item() == pytest.approx(_ce64(z[0].tolist(), lam, 2), rel=1e-14)


# --------------------------------------------------------------------------- 2. offsets in the logits' precision
def test_offsets_are_exact_in_float64():
    counts = [3.0, 7.0, 11.0, 13.0, 1.0]
    z = torch.tensor([[0.1, -0.2, 0.3, 0.05, 2.0]], dtype=torch.float64)
    y = torch.tensor([2])
    want = _ce64(z[0].tolist(), counts, 2)
    assert LN.BalancedSoftmaxCE(counts)(z, y).item() == pytest.approx(want, rel=1e-15, abs=1e-15)
    total = sum(counts)
    offsets = L.regularized_softmax_offsets(counts)
    for c, n in enumerate(counts):
        assert offsets[c].item() == pytest.approx(math.log(n / total), rel=1e-15, abs=1e-15)
    assert L.logit_adjusted_cross_entropy(z, y, offsets).item() == pytest.approx(want, rel=1e-15, abs=1e-15)
    assert L.balanced_softmax_offsets(counts)[0].item() == math.log(3.0)


# --------------------------------------------------------------------------- 3. one rule for ignored targets
def _target_losses():
    counts = [5.0, 4.0, 3.0, 2.0]
    memory = torch.tensor([True, False, False])
    teacher = torch.zeros(3, 2, dtype=torch.float64)
    return {
        "logit_adjusted": lambda z, y: L.logit_adjusted_cross_entropy(z, y, torch.zeros(4)),
        "balanced": lambda z, y: L.balanced_softmax_cross_entropy(z, y, counts),
        "nn.BalancedSoftmaxCE": lambda z, y: LN.BalancedSoftmaxCE(counts)(z, y),
        "nn.LogitAdjustedCE": lambda z, y: LN.LogitAdjustedCE(torch.zeros(4))(z, y),
        "separated": lambda z, y: L.separated_softmax_cross_entropy(z, y, 2, memory),
        "separated_unchecked": lambda z, y: L.separated_softmax_cross_entropy(z, y, 2, memory, check_targets=False),
        "input_coordination": lambda z, y: L.input_coordination_ce(z, y),
        "jioc": lambda z, y: L.jioc_loss(z, y, teacher, [0, 2], memory),
        "jioc_ce_kd": lambda z, y: L.jioc_loss(z, y, teacher, [0, 2], memory, use_ic=False, use_oc=False),
    }


@pytest.mark.parametrize("name", list(_target_losses()))
@pytest.mark.parametrize("bad", [-100, -1, 4, 9])
def test_targets_outside_the_classes_raise_our_error_on_every_path(name, bad, path):
    z = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, bad]) if name.startswith(("separated", "jioc")) else torch.tensor([bad, 2, 3])
    with pytest.raises(L.LossArgumentError, match=rf"target must hold class indices in \[0, 4\), got {bad}"):
        _target_losses()[name](z, y)


def test_ignore_index_is_rejected_with_a_hint(path):
    with pytest.raises(L.LossArgumentError, match="ignore_index"):
        L.balanced_softmax_cross_entropy(torch.randn(2, 3), torch.tensor([-100, 1]), [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- 4. errors and dtypes of our own
def _kd_losses():
    lost = [3.0, 0.0, 5.0, 1.0]
    memory = torch.tensor([True, False])
    return {
        "kd_loss": lambda s, t: L.kd_loss(s, t),
        "task_wise_kd": lambda s, t: L.task_wise_kd(s, t, [0, 2, 4]),
        "output_coordination_kd": lambda s, t: L.output_coordination_kd(s, t, [0, 2, 4]),
        "segmented_kd": lambda s, t: L.segmented_kd(s, t, [0, 1, 4]),
        "dakd_loss": lambda s, t: L.dakd_loss(s, t, lost),
        "jioc_loss": lambda s, t: L.jioc_loss(s, torch.tensor([1, 3]), t, [0, 2, 4], memory),
        "nn.KDLoss": lambda s, t: LN.KDLoss()(s, t),
        "nn.TaskWiseKD": lambda s, t: LN.TaskWiseKD([0, 2, 4])(s, t),
        "nn.DAKDLoss": lambda s, t: LN.DAKDLoss(lost)(s, t),
    }


@pytest.mark.parametrize("name", list(_kd_losses()))
@pytest.mark.parametrize("student, teacher", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_mixed_student_teacher_dtypes_follow_the_students(name, student, teacher):
    s = torch.randn(2, 4, dtype=student, requires_grad=True)
    t = torch.randn(2, 4, dtype=teacher, requires_grad=True)
    loss = _kd_losses()[name](s, t)
    assert loss.dtype == student
    g_s, g_t = torch.autograd.grad(loss, (s, t), allow_unused=True)
    assert g_s.dtype == student and (g_t is None or g_t.dtype == teacher)


def test_reweighter_mixed_dtypes_raise_our_error():
    layer = L.GradientReweighter()
    layer.start_phase(4, 2, 100.0, 50.0)
    features = torch.randn(3, 5, requires_grad=True)
    with pytest.raises(L.LossTypeError, match=r"weight has dtype torch.float64.*features.*torch.float32"):
        layer(features, torch.randn(4, 5, dtype=torch.float64), torch.zeros(4))
    with pytest.raises(L.LossTypeError, match=r"bias has dtype torch.float64"):
        layer(features, torch.randn(4, 5), torch.zeros(4, dtype=torch.float64))
