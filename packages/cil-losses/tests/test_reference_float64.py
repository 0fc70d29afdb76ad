"""Every loss, on every path it has, against plain float64 Python (``math``, lists) on the same inputs.

Values and gradients, with the edge cases of issue 18: a class weight λ_c = 0, a class with count 0, logits of
±1e4, a batch of one sample, one class per task. Paths: the shifted cross-entropy's ``F.cross_entropy`` and fused
CPU Function, the module with cached offsets and the tensor-α (Meta) path; the segmented softmax's run, short-slice
and padded layouts; the reweighted layer's host and tensor ratios (in test_gradient_reweighter.py).
Gradients are the closed forms (``softmax − onehot`` and friends), written here per row and class.
"""

from __future__ import annotations

import math

import pytest
import torch

import cil_losses as L
from cil_losses import balanced
from cil_losses import nn as LN

ABS = 1e-12            # float64 agreement asked for values and gradients (the losses reach ~1e-15 relative)


# --------------------------------------------------------------------------- plain float64 helpers
def lse(values):
    finite = [v for v in values if v != -math.inf]
    m = max(finite)
    return m + math.log(math.fsum(math.exp(v - m) for v in finite))


def softmax(values):
    s = lse(values)
    return [math.exp(v - s) if v != -math.inf else 0.0 for v in values]


def log_or_minus_inf(x):
    return math.log(x) if x > 0 else -math.inf


def ce_row(z, o, y):
    """``−log softmax(z + o)_y`` and its gradient ``softmax(z + o) − e_y``."""
    shifted = [a + b for a, b in zip(z, o)]
    p = softmax(shifted)
    return lse(shifted) - shifted[y], [pc - (1.0 if c == y else 0.0) for c, pc in enumerate(p)]


def soft_ce_row(a, b, T):
    """``−Σ softmax(b/T) log softmax(a/T)`` and its gradient in ``a``: ``(p − q)/T``."""
    la = [v / T for v in a]
    s = lse(la)
    q = softmax([v / T for v in b])
    p = softmax(la)
    return -math.fsum(qc * (lc - s) for qc, lc in zip(q, la)), [(pc - qc) / T for pc, qc in zip(p, q)]


def kl_row(a, b, T):
    """``KL(softmax(b/T) ‖ softmax(a/T))`` and its gradient in ``a``."""
    lq = [v / T - lse([w / T for w in b]) for v in b]
    la = [v / T - lse([w / T for w in a]) for v in a]
    value = math.fsum(math.exp(x) * (x - y) for x, y in zip(lq, la))
    p, q = softmax([v / T for v in a]), softmax([v / T for v in b])
    return value, [(pc - qc) / T for pc, qc in zip(p, q)]


def check(loss, z, want_value, want_grad, *, scale=1.0):
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(want_value, rel=1e-13, abs=ABS * scale)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-12, atol=ABS)


# --------------------------------------------------------------------------- inputs
def _cases():
    """(name, logits rows, targets, counts): the edge cases, each a small batch."""
    g = torch.Generator().manual_seed(18)
    rand = (torch.randn(6, 7, generator=g, dtype=torch.float64) * 3).tolist()
    huge = [[1e4, -1e4, 0.0, -1e4, 1e4, 3.0, -1e4], [-1e4, 1e4, 1e4, 0.0, -1e4, -1e4, 2.0]]
    return {
        "random": (rand, [0, 3, 6, 2, 5, 1], [20.0, 20.0, 3.0, 500.0, 120.0, 7.0, 1.0]),
        "count_zero": (rand, [0, 3, 6, 2, 5, 0], [20.0, 0.0, 3.0, 500.0, 0.0, 7.0, 1.0]),
        "huge_logits": (huge, [4, 1], [20.0, 20.0, 3.0, 500.0, 120.0, 7.0, 1.0]),
        "huge_on_zero_count": (huge, [4, 2], [20.0, 0.0, 3.0, 500.0, 120.0, 7.0, 0.0]),
        "one_sample": (rand[:1], [6], [20.0, 20.0, 3.0, 500.0, 120.0, 7.0, 1.0]),
    }


CASES = _cases()


@pytest.fixture(params=["unfused", "fused"])
def path(request, monkeypatch):
    monkeypatch.setattr(balanced, "FUSED_MIN_NUMEL", 0 if request.param == "fused" else 10**12)
    return request.param


# --------------------------------------------------------------------------- shifted CE family
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", ["plain", "alpha", "relaxed_eps0", "alpha0", "module", "tensor_alpha",
                                     "logit_adjusted"])
def test_balanced_family(case, variant, path):
    rows, y, counts = CASES[case]
    num_old, alpha, eps = {"plain": (0, 1.0, None), "alpha": (3, 0.25, None), "relaxed_eps0": (3, 1.0, 0.0),
                           "alpha0": (3, 0.0, None), "module": (2, 0.5, None), "tensor_alpha": (3, 0.4, None),
                           "logit_adjusted": (0, 1.0, None)}[variant]
    lam = [(eps if eps is not None else alpha * n) if c < num_old else n for c, n in enumerate(counts)]
    if any(lam[t] == 0 for t in y):                    # a target of weight 0: −log 0 = +inf (tested elsewhere)
        y = [max(range(len(lam)), key=lambda c: lam[c])] * len(y)
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(y)
    if variant == "module":
        loss = LN.BalancedSoftmaxCE(counts, num_old=num_old, alpha=alpha)(z, target)
    elif variant == "tensor_alpha":
        loss = L.balanced_softmax_cross_entropy(z, target, counts, num_old, torch.tensor(alpha, dtype=torch.float64))
    elif variant == "logit_adjusted":
        total = sum(counts)
        loss = L.logit_adjusted_cross_entropy(z, target, L.regularized_softmax_offsets(counts))
        lam = [n / total for n in counts]
    else:
        loss = L.balanced_softmax_cross_entropy(z, target, counts, num_old, alpha, eps)
    offsets = [log_or_minus_inf(v) for v in lam]
    per_row = [ce_row(r, offsets, t) for r, t in zip(rows, y)]
    batch = len(rows)
    value = math.fsum(v for v, _ in per_row) / batch
    grad = [[gc / batch for gc in g] for _, g in per_row]
    check(loss, z, value, grad, scale=max(1.0, abs(value)))


@pytest.mark.parametrize("case", list(CASES))
def test_fused_and_unfused_agree_exactly_enough(case, monkeypatch):
    rows, y, counts = CASES[case]
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    out = {}
    for name, threshold in (("unfused", 10**12), ("fused", 0)):
        monkeypatch.setattr(balanced, "FUSED_MIN_NUMEL", threshold)
        loss = L.balanced_softmax_cross_entropy(z, torch.tensor(y), counts, reduction="none")
        out[name] = (loss, *torch.autograd.grad(loss.sum(), z))
    for a, b in zip(out["unfused"], out["fused"]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-12)


# --------------------------------------------------------------------------- distillation
TASKS = {"runs": [0, 2, 4, 6], "one_class_per_task": [0, 1, 2, 3, 4, 5, 6],
         "padded": [0, 1, 3, 4, 6, 7]}          # >4 runs of equal lengths: the padded layout (7 columns)


def _kd_inputs(case):
    rows, _, _ = CASES[case]
    teacher = [[(v * 0.7 + 1.0) if abs(v) < 1e3 else -v for v in r] for r in rows]
    return rows, teacher


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", list(TASKS))
@pytest.mark.parametrize("kl", [True, False], ids=["task_wise_kd", "output_coordination_kd"])
def test_segmented_kd(case, layout, kl):
    rows, teacher = _kd_inputs(case)
    bounds = TASKS[layout]
    if bounds[-1] > len(rows[0]):
        pytest.skip("layout wider than the logits")
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(teacher, dtype=torch.float64)
    T = 2.0
    loss = (L.task_wise_kd(z, t, bounds, T) if kl else L.output_coordination_kd(z, t, bounds, T))
    batch, width = len(rows), len(rows[0])
    value, grad = 0.0, [[0.0] * width for _ in rows]
    scale = T * T if kl else 1.0
    for i, (a, b) in enumerate(zip(rows, teacher)):
        for lo, hi in zip(bounds, bounds[1:]):
            v, g = (kl_row if kl else soft_ce_row)(a[lo:hi], b[lo:hi], T)
            value += v * scale / batch
            for k, gk in enumerate(g):
                grad[i][lo + k] = gk * scale / batch
    check(loss, z, value, grad, scale=max(1.0, abs(value)))


@pytest.mark.parametrize("case", list(CASES))
def test_kd_loss(case):
    rows, teacher = _kd_inputs(case)
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    loss = L.kd_loss(z, torch.tensor(teacher, dtype=torch.float64), 2.0, t_squared=True)
    parts = [soft_ce_row(a, b, 2.0) for a, b in zip(rows, teacher)]
    batch = len(rows)
    check(loss, z, 4.0 * math.fsum(v for v, _ in parts) / batch, [[4.0 * gk / batch for gk in g] for _, g in parts],
          scale=1e4)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("lost", [[480.0, 0.0, 3.0, 100.0, 0.0, 7.0, 1.0], [0.0] * 7, [5.0] * 7])
def test_dakd(case, lost):
    rows, teacher = _kd_inputs(case)
    T, n = 2.0, len(lost)
    norm = math.sqrt(math.fsum(v * v for v in lost))
    v = [x / norm for x in lost] if norm > 0 else [0.0] * n
    shifted = [x + 0.001 for x in lost]
    q_l = [x / math.fsum(shifted) for x in shifted]
    H = -math.fsum(x * math.log(x) for x in q_l) / math.log(n) if norm > 0 else 1.0
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    loss = L.dakd_loss(z, torch.tensor(teacher, dtype=torch.float64), lost, T)
    batch = len(rows)
    value, grad = 0.0, []
    for a, b in zip(rows, teacher):
        adjusted = [vc * ac + (1 - vc) * bc for vc, ac, bc in zip(v, a, b)]
        plain_v, _ = soft_ce_row(a, b, T)
        adj_v, _ = soft_ce_row(adjusted, b, T)
        value += (H * plain_v + (1 - H) * adj_v) / batch
        p, aa, q = softmax([x / T for x in a]), softmax([x / T for x in adjusted]), softmax([x / T for x in b])
        grad.append([(H * (pc - qc) + (1 - H) * vc * (ac - qc)) / (T * batch) for pc, ac, qc, vc in zip(p, aa, q, v)])
    check(loss, z, value, grad, scale=1e4)


# --------------------------------------------------------------------------- SS-IL and JIOC
@pytest.mark.parametrize("case", list(CASES))
def test_separated_softmax(case, path):
    rows, _, _ = CASES[case]
    num_old, batch = 3, len(rows)
    memory = [i % 2 == 0 for i in range(batch)]
    y = [(i % num_old) if m else num_old + (i % 4) for i, m in enumerate(memory)]
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    loss = L.separated_softmax_cross_entropy(z, torch.tensor(y), num_old, torch.tensor(memory))
    value, grad = 0.0, []
    for r, t, m in zip(rows, y, memory):
        lo, hi = (0, num_old) if m else (num_old, len(r))
        v, g = ce_row(r[lo:hi], [0.0] * (hi - lo), t - lo)
        value += v / batch
        grad.append([g[c - lo] / batch if lo <= c < hi else 0.0 for c in range(len(r))])
    check(loss, z, value, grad, scale=max(1.0, value))


@pytest.mark.parametrize("case", list(CASES))
def test_input_coordination(case):
    rows, y, _ = CASES[case]
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    loss = L.input_coordination_ce(z, torch.tensor(y))
    value, grad, batch = 0.0, [], len(rows)
    for r, t in zip(rows, y):
        ce, g = ce_row(r, [0.0] * len(r), t)
        delta = -math.expm1(-ce)                              # 1 − p_y
        value += delta * ce / batch
        grad.append([delta * gc / batch for gc in g])
    check(loss, z, value, grad, scale=max(1.0, value))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("squared", [False, True])
def test_new_head_suppression(case, squared):
    rows, _, _ = CASES[case]
    num_old, batch = 4, len(rows)
    memory = [i % 2 == 0 for i in range(batch)]
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    loss = L.new_head_suppression(z, torch.tensor(memory), num_old, squared=squared)
    count = max(1, sum(memory))
    value, grad = 0.0, []
    for r, m in zip(rows, memory):
        p = softmax(r)
        new = [p[c] for c in range(num_old, len(r))]
        if not m:
            grad.append([0.0] * len(r))
            continue
        if squared:
            value += math.fsum(x * x for x in new) / count
            s2 = math.fsum(x * x for x in new)
            grad.append([(2 * p[c] * ((p[c] if c >= num_old else 0.0) - s2)) / count for c in range(len(r))])
        else:
            mass = math.fsum(new)
            value += mass / count
            grad.append([p[c] * ((1.0 if c >= num_old else 0.0) - mass) / count for c in range(len(r))])
    check(loss, z, value, grad)


@pytest.mark.parametrize("bounds", [[0, 2, 4, 6], [0, 1, 2, 3, 4, 5, 6]], ids=["tasks_of_2", "one_class_per_task"])
def test_segmented_log_softmax(bounds):
    rows, _, _ = CASES["huge_logits"]
    z = torch.tensor([r[: bounds[-1]] for r in rows], dtype=torch.float64, requires_grad=True)
    out = L.segmented_log_softmax(z, bounds)
    for i, r in enumerate(z.tolist()):
        for lo, hi in zip(bounds, bounds[1:]):
            s = lse(r[lo:hi])
            for c in range(lo, hi):
                assert out[i, c].item() == pytest.approx(r[c] - s, rel=1e-15, abs=1e-12)
