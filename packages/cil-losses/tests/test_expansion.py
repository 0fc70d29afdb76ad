"""DER's auxiliary loss and FOSTER's effective-number weights, logits alignment and balanced KD against plain
float64 Python (``math``, loops over samples and classes), with their gradients and edge cases."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import cil_losses.expansion as E
from cil_losses.errors import LossArgumentError, LossTypeError


def _log_softmax_row(row):
    m = max(row)
    s = sum(math.exp(v - m) for v in row)
    return [v - m - math.log(s) for v in row]


def _softmax_row(row):
    return [math.exp(v) for v in _log_softmax_row(row)]


def _ref_aux(z, y, num_old):
    total = 0.0
    for row, label in zip(z, y):
        mapped = 0 if label < num_old else label - num_old + 1
        total -= _log_softmax_row(row)[mapped]
    return total / len(z)


def _ref_weights(counts, beta):
    eff = []
    for n in counts:
        n = max(n, 1)
        eff.append(n if beta == 1.0 else (1.0 - beta ** n) / (1.0 - beta))
    inv = [1.0 / e for e in eff]
    mean = sum(inv) / len(inv)
    return [v / mean for v in inv]


def _ref_alignment(z, y, w):
    total = 0.0
    for row, label in zip(z, y):
        total -= _log_softmax_row([v / wc for v, wc in zip(row, w)])[label]
    return total / len(z)


def _ref_bkd(z, teacher, w, T):
    total = 0.0
    for row, trow in zip(z, teacher):
        q = [p * wc for p, wc in zip(_softmax_row([v / T for v in trow]), w)]
        s = sum(q)
        log_p = _log_softmax_row([v / T for v in row])
        total -= sum(qc / s * lp for qc, lp in zip(q, log_p))
    return total / len(z)


def _numeric_grad(fn, z, eps=1e-6):
    """Central differences of a float function of a nested list."""
    grad = [[0.0] * len(z[0]) for _ in z]
    for i in range(len(z)):
        for j in range(len(z[0])):
            hi = [r[:] for r in z]
            lo = [r[:] for r in z]
            hi[i][j] += eps
            lo[i][j] -= eps
            grad[i][j] = (fn(hi) - fn(lo)) / (2 * eps)
    return grad


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def test_aux_targets_map_old_classes_to_zero():
    y = torch.tensor([0, 4, 5, 6, 9])
    assert E.aux_targets(y, 5).tolist() == [0, 0, 1, 2, 5]
    assert E.aux_targets(y, 0).tolist() == [1, 5, 6, 7, 10]
    with pytest.raises(LossTypeError):
        E.aux_targets(torch.tensor([0.5]), 1)
    with pytest.raises(LossArgumentError):
        E.aux_targets(y, -1)


@pytest.mark.parametrize("num_old", [0, 3, 6])
def test_auxiliary_loss_matches_float64_reference(gen, num_old):
    num_new = 4
    z = torch.randn(9, num_new + 1, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, num_old + num_new, (9,), generator=gen)
    z.requires_grad_(True)
    got = E.auxiliary_loss(z, y, num_old)
    want = _ref_aux(z.tolist(), y.tolist(), num_old)
    assert abs(float(got.detach()) - want) < 1e-12
    (g,) = torch.autograd.grad(got, z)
    num = _numeric_grad(lambda zz: _ref_aux(zz, y.tolist(), num_old), z.tolist())
    assert torch.allclose(g, torch.tensor(num, dtype=torch.float64), atol=1e-7)
    per = E.auxiliary_loss(z, y, num_old, reduction="none")
    assert per.shape == (9,) and abs(float(per.mean().detach()) - want) < 1e-12


def test_auxiliary_loss_rejects_a_target_outside_the_aux_head():
    with pytest.raises(LossArgumentError):
        E.auxiliary_loss(torch.zeros(2, 3), torch.tensor([0, 9]), num_old=5)  # 9 maps to 5, head has 3


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.96, 0.97, 0.9999, 1.0])
def test_effective_number_weights_match_float64_reference(beta):
    counts = [20, 20, 3, 1, 500, 237, 0]
    got = E.effective_number_weights(counts, beta)
    want = _ref_weights(counts, beta)
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    assert abs(float(got.mean()) - 1.0) < 1e-12


def test_effective_number_weights_author_closed_form():
    """FOSTER issue #10: γ_old = (c_o E_n + c_n E_o)/((c_o + c_n) E_n), γ_new = (...)/((c_o + c_n) E_o), with
    γ = 1/w; e.g. B0-10 with 2000 exemplars at the last phase (β1 = 0.94): γ_old ≈ 0.97, γ_new ≈ 1.31 from
    22 exemplars and 500 images per class."""
    c_o, c_n, beta = 90, 10, 0.94
    w = E.effective_number_weights([22] * c_o + [500] * c_n, beta)
    e_o, e_n = (1 - beta ** 22) / (1 - beta), (1 - beta ** 500) / (1 - beta)
    gamma_old = (c_o * e_n + c_n * e_o) / ((c_o + c_n) * e_n)
    gamma_new = (c_o * e_n + c_n * e_o) / ((c_o + c_n) * e_o)
    assert abs(1 / float(w[0]) - gamma_old) < 1e-12 and abs(1 / float(w[-1]) - gamma_new) < 1e-12
    assert round(gamma_old, 2) == 0.97 and round(gamma_new, 2) == 1.31


def test_effective_number_weights_follow_like_and_reject_bad_input():
    like = torch.zeros(2, dtype=torch.bfloat16)
    assert E.effective_number_weights(torch.tensor([3, 5]), 0.9, like=like).dtype == torch.float32
    assert E.effective_number_weights(torch.tensor([3.0, 5.0], dtype=torch.float64), 0.9).dtype == torch.float64
    for bad in (-0.1, 1.5, True, "0.9"):
        with pytest.raises(LossArgumentError):
            E.effective_number_weights([1, 2], bad)
    with pytest.raises(LossArgumentError):
        E.effective_number_weights([1, -2], 0.9)
    with pytest.raises(LossArgumentError):
        E.effective_number_weights([], 0.9)


def test_logits_alignment_matches_float64_reference(gen):
    z = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 4
    y = torch.randint(0, 5, (7,), generator=gen)
    w = E.effective_number_weights([2, 20, 20, 300, 500], 0.96)
    z.requires_grad_(True)
    got = E.logits_alignment_cross_entropy(z, y, w)
    want = _ref_alignment(z.tolist(), y.tolist(), w.tolist())
    assert abs(float(got.detach()) - want) < 1e-12
    (g,) = torch.autograd.grad(got, z)
    num = _numeric_grad(lambda zz: _ref_alignment(zz, y.tolist(), w.tolist()), z.tolist())
    assert torch.allclose(g, torch.tensor(num, dtype=torch.float64), atol=1e-7)


def test_logits_alignment_with_unit_weights_is_cross_entropy(gen):
    z = torch.randn(6, 4, generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    assert torch.equal(E.logits_alignment_cross_entropy(z, y, torch.ones(4)), torch.nn.functional.cross_entropy(z, y))
    with pytest.raises(LossArgumentError):
        E.logits_alignment_cross_entropy(z, y, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(LossArgumentError):
        E.logits_alignment_cross_entropy(z, y, torch.ones(3))


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_balanced_kd_matches_float64_reference(gen, T):
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    w = E.effective_number_weights([20, 20, 7, 400, 500], 0.97)
    z.requires_grad_(True)
    teacher.requires_grad_(True)
    got = E.balanced_kd(z, teacher, w, T)
    want = _ref_bkd(z.tolist(), teacher.tolist(), w.tolist(), T)
    assert abs(float(got.detach()) - want) < 1e-12
    gz, gt = torch.autograd.grad(got, (z, teacher), allow_unused=True)
    assert gt is None or not gt.any()  # the teacher is a constant
    num = _numeric_grad(lambda zz: _ref_bkd(zz, teacher.tolist(), w.tolist(), T), z.tolist())
    assert torch.allclose(gz, torch.tensor(num, dtype=torch.float64), atol=1e-7)
    per = E.balanced_kd(z, teacher, w, T, reduction="none")
    assert per.shape == (6,) and abs(float(per.sum().detach()) / 6 - want) < 1e-12


def test_balanced_kd_with_unit_weights_is_plain_kd(gen):
    import cil_losses as L

    z, teacher = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    assert torch.allclose(E.balanced_kd(z, teacher, torch.ones(4), 2.0), L.kd_loss(z, teacher, 2.0), atol=1e-6)
    with pytest.raises(LossArgumentError):
        E.balanced_kd(z, teacher[:, :3], torch.ones(4))


def test_balanced_kd_weight_check_can_be_left_to_the_caller(gen):
    """``check_weights=False`` (a caller that validated its weights once) gives the same loss on valid weights,
    and only the checked call refuses a zero or infinite weight."""
    z, teacher = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    w = E.effective_number_weights([3, 50, 50, 400], 0.99)
    assert torch.equal(E.balanced_kd(z, teacher, w, check_weights=False), E.balanced_kd(z, teacher, w))
    for bad in (torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, float("inf"), 1.0, 1.0])):
        with pytest.raises(LossArgumentError, match="finite and > 0"):
            E.balanced_kd(z, teacher, bad)
        E.balanced_kd(z, teacher, bad, check_weights=False)  # the caller's responsibility
    with pytest.raises(LossArgumentError):  # the shape is still checked
        E.balanced_kd(z, teacher, torch.ones(3), check_weights=False)


def test_saturated_logits_stay_finite():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]], requires_grad=True)
    y = torch.tensor([0, 1])
    w = torch.tensor([1.5, 1.0, 0.5])
    for loss in (E.auxiliary_loss(z, y, 0), E.logits_alignment_cross_entropy(z, y, w), E.balanced_kd(z, -z, w)):
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_half_precision_inputs_compute_in_float32(gen):
    z = torch.randn(4, 3, generator=gen).to(torch.bfloat16)
    y = torch.tensor([0, 1, 2, 0])
    w = torch.tensor([1.2, 1.0, 0.8])
    assert E.logits_alignment_cross_entropy(z, y, w).dtype == torch.float32
    assert E.balanced_kd(z, z, w).dtype == torch.float32
    assert E.auxiliary_loss(z, y, 1).dtype == torch.float32


def test_docstring_examples_run():
    result = doctest.testmod(E, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 5
