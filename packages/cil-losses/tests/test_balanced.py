"""BalancedS-CE (α, Relaxed ε), its offsets, logit-adjusted CE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import cil_losses as L
from cil_losses import balanced
from cil_losses.errors import LossArgumentError, LossTypeError

COUNTS = [20.0, 20.0, 3.0, 500.0, 120.0, 7.0, 1.0]


def _targets(gen, batch, classes):
    return torch.randint(0, classes, (batch,), generator=gen)


@pytest.mark.parametrize(
    "num_old, alpha, eps",
    [(0, 1.0, None), (3, 1.0, None), (3, 0.25, None), (3, 1.0, 1.0), (3, 1.0, 0.0), (7, 0.5, None)],
)
def test_values_and_gradients_match_per_sample_formula(num_old, alpha, eps, gen, rand, ref, grad_of, close):
    z = rand(gen, 6, len(COUNTS), grad=True)
    y = _targets(gen, 6, len(COUNTS))
    if eps == 0.0:                       # the old classes have λ = 0: no sample can be of them (its loss is +inf)
        y = num_old + _targets(gen, 6, len(COUNTS) - num_old)
    got = L.balanced_softmax_cross_entropy(z, y, COUNTS, num_old=num_old, alpha=alpha, eps=eps)
    want = ref.balanced_softmax_ce(z, y, COUNTS, num_old, alpha, eps)
    close(got, want)
    close(grad_of(got, z)[0], grad_of(want, z)[0])


def test_offsets_are_log_lambda():
    off = L.balanced_softmax_offsets(COUNTS, num_old=2, alpha=0.5)
    expected = torch.tensor([math.log(10.0), math.log(10.0)] + [math.log(c) for c in COUNTS[2:]], dtype=torch.float64)
    torch.testing.assert_close(off, expected, atol=0, rtol=1e-15)       # float64 by default (1.0)
    relaxed = L.balanced_softmax_offsets(COUNTS, num_old=3, eps=1.5)
    torch.testing.assert_close(relaxed[:3], torch.full((3,), math.log(1.5), dtype=torch.float64))
    torch.testing.assert_close(relaxed[3:], torch.tensor([math.log(c) for c in COUNTS[3:]], dtype=torch.float64))
    assert off.dtype == torch.float64
    assert L.balanced_softmax_offsets(COUNTS, dtype=torch.float32).dtype == torch.float32
    assert L.balanced_softmax_offsets(torch.tensor(COUNTS)).dtype == torch.float64


def test_zero_count_gets_no_mass_and_no_nan(gen, rand):
    counts = [10.0, 0.0, 5.0, 5.0]
    off = L.balanced_softmax_offsets(counts)
    assert off[1] == -math.inf and torch.isfinite(off[[0, 2, 3]]).all()
    z = rand(gen, 5, 4, grad=True)
    y = torch.tensor([0, 2, 3, 0, 2])
    loss = L.balanced_softmax_cross_entropy(z, y, counts)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    q = torch.softmax(z.detach() + off, dim=1)
    assert float(q[:, 1].max()) == 0.0          # the class without samples gets no probability mass
    assert float(z.grad[:, 1].abs().max()) == 0.0
    # a (wrong) target in the empty class: -log 0 = +inf, with the finite gradient softmax(z + o) - e_y
    z.grad = None
    wrong = L.balanced_softmax_cross_entropy(z, torch.tensor([1, 1, 1, 1, 1]), counts)
    wrong.backward()
    assert wrong.item() == math.inf and torch.isfinite(z.grad).all()
    # the pre-1.0 floor is still available
    floored = L.balanced_softmax_offsets(counts, min_lambda=1e-12)
    assert floored[1] == pytest.approx(math.log(1e-12))


def test_relaxed_eps_zero_equals_balanced_without_memory(gen, rand, close):
    z, y = rand(gen, 4, 5), torch.tensor([2, 3, 4, 2])
    counts = [0.0, 0.0, 30.0, 10.0, 5.0]
    close(L.balanced_softmax_cross_entropy(z, y, [9, 9, 30, 10, 5], num_old=2, eps=0.0),
          L.balanced_softmax_cross_entropy(z, y, counts))


def test_alpha_one_is_plain_balanced(gen, rand, close):
    z, y = rand(gen, 4, 7), _targets(gen, 4, 7)
    close(L.balanced_softmax_cross_entropy(z, y, COUNTS, num_old=3, alpha=1.0),
          F.cross_entropy(z + torch.tensor(COUNTS, dtype=torch.float64).log(), y))


def test_alpha_tensor_is_differentiable_twice(gen, rand, ref, close):
    """Meta BalancedS-CE differentiates through a look-ahead step: grad of grad w.r.t. α."""
    z = rand(gen, 5, 7, grad=True)
    y = _targets(gen, 5, 7)
    alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    got = L.balanced_softmax_cross_entropy(z, y, COUNTS, num_old=3, alpha=alpha)
    want = ref.balanced_softmax_ce(z, y, COUNTS, 3, alpha)
    close(got, want)
    (g_got,) = torch.autograd.grad(got, z, create_graph=True)
    (g_want,) = torch.autograd.grad(want, z, create_graph=True)
    close(g_got, g_want)
    close(torch.autograd.grad(g_got.square().sum(), alpha)[0], torch.autograd.grad(g_want.square().sum(), alpha)[0])


def test_counts_as_tensor_on_logits_device_and_reductions(gen, rand, close):
    z, y = rand(gen, 4, 7), _targets(gen, 4, 7)
    per = L.balanced_softmax_cross_entropy(z, y, torch.tensor(COUNTS), num_old=2, alpha=0.5, reduction="none")
    assert per.shape == (4,)
    close(per.sum(), L.balanced_softmax_cross_entropy(z, y, COUNTS, 2, 0.5, reduction="sum"))


def test_huge_logits_and_batch_of_one():
    z = torch.tensor([[1e4, -1e4, 0.0, -1e4, 1e4, 3.0, -1e4]], requires_grad=True)
    loss = L.balanced_softmax_cross_entropy(z, torch.tensor([1]), COUNTS, num_old=2, alpha=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(class_counts=[1.0, -2.0]), LossArgumentError, "class_counts"),
        (dict(class_counts=[1.0, float("nan")]), LossArgumentError, "class_counts"),
        (dict(class_counts=[[1.0]]), LossTypeError, "class_counts"),
        (dict(class_counts="12"), LossTypeError, "class_counts"),
        (dict(class_counts=[1.0, 2.0], num_old=3), LossArgumentError, "num_old"),
        (dict(class_counts=[1.0, 2.0], num_old=1, alpha=-1.0), LossArgumentError, "alpha"),
        (dict(class_counts=[1.0, 2.0], num_old=1, alpha=0.5, eps=1.0), LossArgumentError, "alpha and eps"),
        (dict(class_counts=[1.0, 2.0], num_old=1, eps=-1.0), LossArgumentError, "eps"),
    ],
)
def test_offset_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        L.balanced_softmax_offsets(**kwargs)


def test_counts_must_match_columns():
    with pytest.raises(LossArgumentError, match="one entry per logit column"):
        L.balanced_softmax_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), [1.0, 2.0])


def test_relaxed_eps_default():
    assert L.relaxed_eps_default(500) == pytest.approx(1.0)
    assert L.relaxed_eps_default(1300) == pytest.approx(2.6)
    with pytest.raises(LossArgumentError, match="mean_class_count"):
        L.relaxed_eps_default(-1)


def test_logit_adjusted_cross_entropy(gen, rand, grad_of, close):
    z, y = rand(gen, 5, 4, grad=True), _targets(gen, 5, 4)
    per_class = rand(gen, 4, grad=True)
    got = L.logit_adjusted_cross_entropy(z, y, per_class)
    want = -torch.log_softmax(z + per_class, dim=1)[torch.arange(5), y].mean()
    close(got, want)
    for g, w in zip(grad_of(got, z, per_class), grad_of(want, z, per_class)):
        close(g, w)
    per_sample = rand(gen, 5, 4)
    close(L.logit_adjusted_cross_entropy(z, y, per_sample, reduction="none"),
          -torch.log_softmax(z + per_sample, dim=1)[torch.arange(5), y])
    with pytest.raises(LossArgumentError, match="offsets must have shape"):
        L.logit_adjusted_cross_entropy(z, y, torch.zeros(3))
    with pytest.raises(LossTypeError, match="target"):
        L.logit_adjusted_cross_entropy(z, y.double(), per_class)


def test_offsets_memo_fast_path_never_serves_another_configuration(gen, rand, close):
    """The latest-entry shortcut of the memo: other counts, arguments, dtypes or a recycled id all miss it."""
    z, y = rand(gen, 4, 3), torch.tensor([0, 1, 2, 1])

    def expected(lam, logits=z):
        return F.cross_entropy(logits.double() + torch.tensor(lam, dtype=torch.float64).log(), y)

    a, b = torch.tensor([5.0, 10.0, 20.0]), torch.tensor([1.0, 2.0, 4.0])
    for _ in range(2):                                  # alternate between two count tensors
        close(L.balanced_softmax_cross_entropy(z, y, a), expected([5.0, 10.0, 20.0]))
        close(L.balanced_softmax_cross_entropy(z, y, b), expected([1.0, 2.0, 4.0]))
    close(L.balanced_softmax_cross_entropy(z, y, b, num_old=1, alpha=0.5), expected([0.5, 2.0, 4.0]))
    close(L.balanced_softmax_cross_entropy(z, y, b, num_old=2, alpha=0.5), expected([0.5, 1.0, 4.0]))
    close(L.balanced_softmax_cross_entropy(z, y, b, num_old=2, alpha=0.25), expected([0.25, 0.5, 4.0]))
    close(L.balanced_softmax_cross_entropy(z, y, b, num_old=2, eps=3.0), expected([3.0, 3.0, 4.0]))
    close(L.balanced_softmax_cross_entropy(z, y, b, num_old=2, eps=2.0), expected([2.0, 2.0, 4.0]))
    zero = torch.tensor([0.0, 2.0, 4.0])
    close(L.balanced_softmax_cross_entropy(z, y, zero, min_lambda=1e-12), expected([1e-12, 2.0, 4.0]))
    close(L.balanced_softmax_cross_entropy(z, y, zero, min_lambda=1.0), expected([1.0, 2.0, 4.0]))
    assert L.balanced_softmax_cross_entropy(z, y, zero).item() == math.inf      # y holds class 0, of λ = 0
    z32 = z.float()
    out = L.balanced_softmax_cross_entropy(z32, y, b)    # float32 logits: float32 offsets, not the float64 ones
    assert out.dtype == torch.float32
    from cil_losses.balanced import _offsets_for_step
    for dtype in (torch.float64, torch.float32, torch.float64):
        assert _offsets_for_step(b, 0, 1.0, None, 1e-12, dtype, z.device).dtype == dtype
    close(out.double(), expected([1.0, 2.0, 4.0], z32), atol=1e-6, rtol=1e-6)
    for values in ([3.0, 3.0, 3.0], [9.0, 1.0, 1.0]):   # fresh tensors (CPython may reuse the freed id)
        del a
        a = torch.tensor(values)
        close(L.balanced_softmax_cross_entropy(z, y, a), expected(values))


def test_offsets_memo_follows_in_place_changes_of_the_counts(gen, rand, close):
    z, y = rand(gen, 4, 3), torch.tensor([0, 1, 2, 1])
    counts = torch.tensor([5.0, 10.0, 20.0])
    first = L.balanced_softmax_cross_entropy(z, y, counts)
    close(first, F.cross_entropy(z + counts.double().log(), y))
    counts[0] = 50.0  # the same tensor object, changed in place: the memo must not serve stale offsets
    close(L.balanced_softmax_cross_entropy(z, y, counts), F.cross_entropy(z + counts.double().log(), y))
    close(L.balanced_softmax_cross_entropy(z, y, counts, num_old=1, alpha=0.1),
          F.cross_entropy(z + torch.tensor([5.0, 10.0, 20.0], dtype=torch.float64).log(), y))
    with pytest.raises(LossArgumentError, match="class_counts"):
        L.balanced_softmax_cross_entropy(z, y, [1.0, -1.0, 2.0])


# --------------------------------------------------------------------------- fused CPU cross-entropy
@pytest.fixture
def fused_always(monkeypatch):
    """Route every CPU call of the shifted cross-entropy through ShiftedCrossEntropyFunction."""
    monkeypatch.setattr(balanced, "FUSED_MIN_NUMEL", 0)


def _reference_shifted_ce(z, y, offsets, reduction):
    per_sample = -torch.log_softmax(z + offsets, dim=1)[torch.arange(z.shape[0]), y]
    return {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("per_sample_offsets", [False, True], ids=["offsets[C]", "offsets[B,C]"])
def test_fused_shifted_ce_matches_reference(reduction, per_sample_offsets, fused_always, gen, rand, grad_of, close):
    z, y = rand(gen, 7, 5, grad=True), _targets(gen, 7, 5)
    offsets = rand(gen, 7, 5) if per_sample_offsets else rand(gen, 5)
    got = L.logit_adjusted_cross_entropy(z, y, offsets, reduction=reduction)
    assert got.grad_fn is not None and "ShiftedCrossEntropy" in type(got.grad_fn).__name__
    want = _reference_shifted_ce(z, y, offsets, reduction)
    close(got, want)
    upstream = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    (g_got,) = torch.autograd.grad(got, z, upstream)
    (g_want,) = torch.autograd.grad(want, z, upstream)
    close(g_got, g_want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_shifted_ce_gradcheck_and_second_order(reduction, fused_always, gen, rand):
    z, y, offsets = rand(gen, 4, 6, grad=True), _targets(gen, 4, 6), rand(gen, 6)

    def loss(x):
        return L.logit_adjusted_cross_entropy(x, y, offsets, reduction=reduction)

    assert torch.autograd.gradcheck(loss, (z,))
    assert torch.autograd.gradgradcheck(loss, (z,))         # create_graph: the differentiable backward


def test_fused_shifted_ce_edge_cases(fused_always, close):
    # one class: loss 0, gradient 0
    z = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    loss = L.logit_adjusted_cross_entropy(z, torch.zeros(3, dtype=torch.long), torch.zeros(1, dtype=torch.float64))
    loss.backward()
    close(loss, torch.zeros((), dtype=torch.float64))
    close(z.grad, torch.zeros_like(z))
    # batch of one with logits of ±1e4, float32 and float64 against the float64 reference
    values = [[1e4, -1e4, 0.0, -1e4, 1e4, 3.0, -1e4]]
    offsets = torch.tensor(COUNTS, dtype=torch.float64).log()
    z64 = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    want = _reference_shifted_ce(z64, torch.tensor([4]), offsets, "mean")
    (g_want,) = torch.autograd.grad(want, z64)
    for dtype in (torch.float32, torch.float64):
        z = torch.tensor(values, dtype=dtype, requires_grad=True)
        got = L.logit_adjusted_cross_entropy(z, torch.tensor([4]), offsets.to(dtype))
        (g_got,) = torch.autograd.grad(got, z)
        assert torch.isfinite(got) and torch.isfinite(g_got).all()
        torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=1e-6)   # float32 spacing at 1e4: 1e-3
        torch.testing.assert_close(g_got.double(), g_want, atol=1e-6, rtol=1e-5)
    # a class with zero count (offset log 1e-12) gets (almost) no probability and no NaN
    z = torch.randn(4, 3, requires_grad=True)
    offsets = L.balanced_softmax_offsets([0.0, 5.0, 9.0])
    loss = L.logit_adjusted_cross_entropy(z, torch.tensor([1, 2, 1, 2]), offsets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad[:, 0].abs().max() < 1e-9


def test_fused_shifted_ce_backward_twice_with_retained_graph(fused_always, gen, rand, close):
    z, y, offsets = rand(gen, 5, 4, grad=True), _targets(gen, 5, 4), rand(gen, 4)
    loss = L.logit_adjusted_cross_entropy(z, y, offsets)
    (first,) = torch.autograd.grad(loss, z, retain_graph=True)
    (second,) = torch.autograd.grad(loss, z)
    close(first, second)


def test_fused_shifted_ce_target_out_of_range(fused_always):
    with pytest.raises(LossArgumentError, match=r"target must hold class indices in \[0, 4\), got 4 at index 1"):
        L.logit_adjusted_cross_entropy(torch.randn(2, 4), torch.tensor([0, 4]), torch.zeros(4))


def test_shifted_ce_dispatch(gen, rand, grad_of, close):
    """Large CPU inputs take the fused Function, small ones F.cross_entropy; offsets that need a gradient
    always take F.cross_entropy (and get their gradient); both paths give the same loss."""
    rows = balanced.FUSED_MIN_NUMEL // 50 + 1
    z, y = rand(gen, rows, 50, dtype=torch.float32, grad=True), _targets(gen, rows, 50)
    offsets = rand(gen, 50, dtype=torch.float32)
    fused = L.logit_adjusted_cross_entropy(z, y, offsets)
    assert "ShiftedCrossEntropy" in type(fused.grad_fn).__name__
    small = L.logit_adjusted_cross_entropy(z[:4], y[:4], offsets)
    assert "ShiftedCrossEntropy" not in type(small.grad_fn).__name__
    learned = offsets.clone().requires_grad_()
    plain = L.logit_adjusted_cross_entropy(z, y, learned)
    assert "ShiftedCrossEntropy" not in type(plain.grad_fn).__name__
    close(fused, plain, atol=1e-6, rtol=1e-6)
    g_fused, = grad_of(fused, z)
    g_plain, g_offsets = grad_of(plain, z, learned)
    close(g_fused, g_plain, atol=1e-8, rtol=1e-5)
    close(g_offsets, g_plain.sum(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["F.cross_entropy", "fused"])
def test_shifted_ce_accepts_every_integer_target_dtype(fused, monkeypatch, gen, rand, close):
    if fused:
        monkeypatch.setattr(balanced, "FUSED_MIN_NUMEL", 0)
    z, y, offsets = rand(gen, 5, 4), _targets(gen, 5, 4), rand(gen, 4)
    want = L.logit_adjusted_cross_entropy(z, y, offsets)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        close(L.logit_adjusted_cross_entropy(z, y.to(dtype), offsets), want)
