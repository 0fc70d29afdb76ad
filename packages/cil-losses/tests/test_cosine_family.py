"""LUCIR and PODNet losses (cil_losses.cosine_family) against plain float64 references.

The references below are written independently of the module: Python loops over samples, classes, layers,
channels and positions, textbook formulas, autograd for every gradient (METHODS.md §7–§8,
methods/cosine-family.md §1.2 and §2.2). Sizes are tiny: the whole file runs in a few seconds.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import cil_losses
from cil_losses import cosine_family as CF
from cil_losses.errors import LossArgumentError, LossTypeError

D64 = torch.float64


# =========================================================================== plain references (float64, loops)
def _value(t: torch.Tensor) -> float:
    return float(t.detach())


def ref_one_minus_cos(f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean_i [1 − <f_i, t_i> / sqrt((‖f_i‖² + 1e-12)(‖t_i‖² + 1e-12))]: torch's cosine_embedding_loss (target +1),
    the op of both official codes; the teacher is a constant."""
    t = t.detach()
    losses = []
    for i in range(f.shape[0]):
        dot = sum(f[i, d] * t[i, d] for d in range(f.shape[1]))
        nf = sum(f[i, d] * f[i, d] for d in range(f.shape[1])) + 1e-12
        nt = sum(t[i, d] * t[i, d] for d in range(f.shape[1])) + 1e-12
        losses.append(1.0 - dot / torch.sqrt(nf * nt))
    return torch.stack(losses)


def ref_margin_ranking(s, y, num_old, margin=0.5, k=2, sum_over_k=False):
    """LUCIR: anchors y < num_old; g = s_y; h = the K largest new-class cosines; hinge m − g + h.
    Code: mean over all H·K pairs; paper: per-anchor sum over the K pairs, mean over anchors."""
    pairs, per_anchor = [], []
    for i in range(s.shape[0]):
        if int(y[i]) >= num_old:
            continue
        g = s[i, int(y[i])]
        new = sorted((s[i, c] for c in range(num_old, s.shape[1])), key=_value, reverse=True)[:k]
        hinges = [torch.clamp(margin - g + h, min=0.0) for h in new]
        pairs.extend(hinges)
        if hinges:
            per_anchor.append(sum(hinges))
    if not pairs:
        return s.sum() * 0.0
    if sum_over_k:
        return sum(per_anchor) / len(per_anchor)
    return sum(pairs) / len(pairs)


def ref_pod_spatial_per_sample(student, teacher):
    """PODNet pod(collapse 'spatial'): per layer and sample, a² summed over W (C·H entries) and over H (C·W
    entries), concatenated, L2-normalised (F.normalize: ÷ max(‖v‖, 1e-12)); Euclidean distance; mean over layers."""
    batch = student[0].shape[0]
    out = []
    for i in range(batch):
        total = 0.0
        for a, b in zip(student, teacher):
            b = b.detach()
            _, c_, h_, w_ = a.shape
            vecs = []
            for m in (a, b):
                v = []
                for c in range(c_):
                    for h in range(h_):
                        v.append(sum(m[i, c, h, w] ** 2 for w in range(w_)))
                for c in range(c_):
                    for w in range(w_):
                        v.append(sum(m[i, c, h, w] ** 2 for h in range(h_)))
                v = torch.stack(v)
                norm = torch.sqrt(sum(x * x for x in v))
                vecs.append(v / torch.clamp(norm, min=1e-12))
            diff = vecs[0] - vecs[1]
            total = total + torch.sqrt(sum(x * x for x in diff))
        out.append(total / len(student))
    return torch.stack(out)


def ref_nca_code(s, y, scale, offsets=None):
    """PODNet nca() as the official code computes it, per sample: with z = η·s (+ o), M = max_j z_j,
    loss = −z_y + log(exp(M) + Σ_{j≠y} exp(z_j)), written shifted by M: −(z_y − M) + log(1 + Σ_{j≠y} exp(z_j − M))."""
    losses = []
    for i in range(s.shape[0]):
        z = [scale * s[i, c] + (0.0 if offsets is None else offsets[c] if offsets.dim() == 1 else offsets[i, c])
             for c in range(s.shape[1])]
        yi = int(y[i])
        m = max(z, key=_value)                          # one arg-max: the gradient flows through it
        rest = sum((torch.exp(z[c] - m) for c in range(len(z)) if c != yi), torch.zeros((), dtype=D64))
        losses.append(-(z[yi] - m) + torch.log(1.0 + rest))
    return torch.stack(losses)


def official_nca_transcription(similarities, targets, scale, margin):
    """The official inclearn/lib/losses/base.py: nca() with exclude_pos_denominator=True, no class weights, no
    hinge (the margins tensor is built but unused; the margin is subtracted from every logit)."""
    margins = torch.zeros_like(similarities)
    margins[torch.arange(margins.shape[0]), targets] = margin
    similarities = scale * (similarities - margin)
    similarities = similarities - similarities.max(1)[0].view(-1, 1)
    disable_pos = torch.zeros_like(similarities)
    disable_pos[torch.arange(len(similarities)), targets] = similarities[torch.arange(len(similarities)), targets]
    numerator = similarities[torch.arange(similarities.shape[0]), targets]
    denominator = similarities - disable_pos
    losses = numerator - torch.log(torch.exp(denominator).sum(-1))
    return torch.mean(-losses)


def ref_nca_paper(s, y, scale, margin, offsets=None):
    """PODNet paper: [ −log( exp(η(s_y − δ)) / Σ_{j≠y} exp(η s_j) ) ]_+ per sample (offsets added to η·s)."""
    losses = []
    for i in range(s.shape[0]):
        yi = int(y[i])
        z = [scale * s[i, c] + (0.0 if offsets is None else offsets[c]) for c in range(s.shape[1])]
        others = [z[c] for c in range(len(z)) if c != yi and _value(z[c]) != -math.inf]
        target = z[yi] - scale * margin
        if not others:
            losses.append(s[i].sum() * 0.0)
            continue
        m = max(others, key=_value).detach()
        lse = m + torch.log(sum(torch.exp(o - m) for o in others))
        losses.append(torch.clamp(lse - target, min=0.0))
    return torch.stack(losses)


def _close(actual, expected, atol=1e-9, rtol=1e-7):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def _grad(loss, *inputs):
    out = torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=True)
    return tuple(torch.zeros_like(i) if g is None else g for i, g in zip(inputs, out))


def _rand(gen, *shape, scale=1.0, grad=False):
    return (torch.randn(*shape, generator=gen, dtype=D64) * scale).requires_grad_(grad)


@pytest.fixture(params=[0, 1], ids=lambda s: f"seed{s}")
def g(request):
    return torch.Generator().manual_seed(2024 + request.param)


# =========================================================================== less-forget / POD-flat
@pytest.mark.parametrize("loss_fn", [CF.less_forget_loss, CF.pod_flat_loss], ids=["lucir", "podnet_flat"])
@pytest.mark.parametrize("batch", [1, 5])
def test_one_minus_cos_matches_reference(loss_fn, batch, g):
    f, t = _rand(g, batch, 4, scale=2.0, grad=True), _rand(g, batch, 4, grad=True)
    got = loss_fn(f, t)
    want = ref_one_minus_cos(f, t).mean()
    _close(got, want)
    gf, gt = _grad(got, f, t)
    _close(gf, _grad(want, f)[0])
    assert torch.count_nonzero(gt) == 0                       # the teacher is detached inside
    _close(loss_fn(f, t, reduction="none"), ref_one_minus_cos(f, t))
    _close(loss_fn(f, t, reduction="sum"), ref_one_minus_cos(f, t).sum())
    # the official op: nn.CosineEmbeddingLoss / F.cosine_embedding_loss with target +1
    _close(got, F.cosine_embedding_loss(f, t.detach(), torch.ones(batch, dtype=D64)))


def test_one_minus_cos_gradcheck(g):
    t = _rand(g, 3, 4)
    assert torch.autograd.gradcheck(lambda f: CF.less_forget_loss(f, t), (_rand(g, 3, 4, grad=True),))
    assert torch.autograd.gradcheck(lambda f: CF.pod_flat_loss(f, t, reduction="none"), (_rand(g, 3, 4, grad=True),))


def test_pod_flat_is_less_forget(g):
    f, t = _rand(g, 4, 6), _rand(g, 4, 6)
    assert torch.equal(CF.pod_flat_loss(f, t), CF.less_forget_loss(f, t))


def test_one_minus_cos_zero_and_huge_features():
    f = torch.tensor([[0.0, 0.0, 0.0], [1e4, -1e4, 3e4], [0.0, 0.0, 0.0]], dtype=D64, requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=D64)
    loss = CF.less_forget_loss(f, t, reduction="none")
    _close(loss, torch.ones(3, dtype=D64))                   # cos = 0 with a zero vector on either side
    loss.sum().backward()
    assert torch.isfinite(f.grad).all()
    huge = torch.tensor([[1e4, -1e4], [-2e4, 5e3]], requires_grad=True)
    out = CF.less_forget_loss(huge, huge * 0.5)
    out.backward()
    assert torch.isfinite(out) and abs(out.item()) < 1e-6 and torch.isfinite(huge.grad).all()


def test_one_minus_cos_dtypes():
    f = torch.randn(3, 5)
    assert CF.less_forget_loss(f, f.clone()).dtype == torch.float32
    assert CF.less_forget_loss(f.double(), f.double()).dtype == D64
    assert CF.less_forget_loss(f.bfloat16(), f.bfloat16()).dtype == torch.float32
    assert CF.less_forget_loss(f.half(), f.double()).dtype == torch.float32  # the student's compute dtype


def test_one_minus_cos_errors():
    with pytest.raises(LossArgumentError, match="same shape"):
        CF.less_forget_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(LossArgumentError, match=r"\[B, D\]"):
        CF.less_forget_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(LossTypeError):
        CF.less_forget_loss(torch.ones(2, 3, dtype=torch.int64), torch.randn(2, 3))
    with pytest.raises(LossTypeError):
        CF.pod_flat_loss(torch.randn(2, 3), [[1.0] * 3] * 2)
    with pytest.raises(LossArgumentError, match="reduction"):
        CF.less_forget_loss(torch.randn(2, 3), torch.randn(2, 3), reduction="avg")


# =========================================================================== λ schedules
def test_lucir_lambda():
    assert CF.lucir_lambda(50, 5) == pytest.approx(5 * math.sqrt(10))           # 15.81 (cosine-family.md §1.2)
    assert CF.lucir_lambda(50, 10, lambda_base=10.0) == pytest.approx(10 * math.sqrt(5))
    assert CF.lucir_lambda(0, 10) == 0.0
    for bad in [(-1, 5), (5, 0), (5, -2)]:
        with pytest.raises(LossArgumentError):
            CF.lucir_lambda(*bad)
    with pytest.raises(LossTypeError):
        CF.lucir_lambda(5.0, 2)
    with pytest.raises(LossArgumentError):
        CF.lucir_lambda(5, 2, lambda_base=-1.0)


def test_podnet_lambdas():
    flat, spatial = CF.podnet_lambdas(55, 5)                                       # CIFAR B50 5-class step 1
    assert flat == pytest.approx(math.sqrt(11)) and spatial == pytest.approx(3 * math.sqrt(11))
    assert spatial == pytest.approx(9.95, abs=5e-3)
    flat, spatial = CF.podnet_lambdas(60, 10, flat_base=10.0, spatial_base=8.0)  # ImageNet
    assert (flat, spatial) == (pytest.approx(10 * math.sqrt(6)), pytest.approx(8 * math.sqrt(6)))
    assert CF.podnet_lambdas(10, 10) == (1.0, 3.0)                                 # first task: √1
    with pytest.raises(LossArgumentError, match="num_seen"):
        CF.podnet_lambdas(4, 5)                                                    # N counts the new classes too
    with pytest.raises(LossArgumentError):
        CF.podnet_lambdas(5, 0)
    with pytest.raises(LossTypeError):
        CF.podnet_lambdas(True, 1)


# =========================================================================== margin ranking
def _mr_batch(gen, batch, num_old, num_classes, scale=1.0):
    s = (torch.rand(batch, num_classes, generator=gen, dtype=D64) * 2 - 1) * scale
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    if num_old > 0:
        y[0] = int(torch.randint(0, num_old, (1,), generator=gen))   # at least one anchor
    return s.requires_grad_(), y


@pytest.mark.parametrize("sum_over_k", [False, True], ids=["code-mean", "paper-sum"])
@pytest.mark.parametrize("num_old, num_classes, k", [(4, 7, 2), (3, 5, 1), (1, 2, 2), (2, 4, 5), (6, 7, 2)])
@pytest.mark.parametrize("margin", [0.5, 0.1])
def test_margin_ranking_matches_reference(num_old, num_classes, k, margin, sum_over_k, g):
    s, y = _mr_batch(g, 6, num_old, num_classes)
    how = "sum_over_k" if sum_over_k else "mean"
    got = CF.margin_ranking_loss(s, y, num_old, margin=margin, k=k, pair_reduction=how)
    want = ref_margin_ranking(s, y, num_old, margin, k, sum_over_k)
    _close(got, want)
    _close(_grad(got, s)[0], _grad(want, s)[0])


def test_margin_ranking_per_sample_and_sum(g):
    s, y = _mr_batch(g, 6, 3, 6)
    per = CF.margin_ranking_loss(s, y, 3, reduction="none")
    assert per.shape == (6,)
    assert torch.all(per[y >= 3] == 0)
    anchors = int((y < 3).sum())
    _close(per.sum() / anchors, CF.margin_ranking_loss(s, y, 3))
    _close(CF.margin_ranking_loss(s, y, 3, reduction="sum"), per.sum())


def test_margin_ranking_gradcheck(g):
    s, y = _mr_batch(g, 5, 3, 6)
    for how in ("mean", "sum_over_k"):
        assert torch.autograd.gradcheck(lambda c: CF.margin_ranking_loss(c, y, 3, pair_reduction=how),
                                        (s.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("case", ["no-anchor", "num_old-0", "no-new-class"])
def test_margin_ranking_zero_with_a_graph(case, g):
    s, _ = _mr_batch(g, 4, 3, 5)
    if case == "no-anchor":
        loss = CF.margin_ranking_loss(s, torch.tensor([3, 4, 4, 3]), 3)
    elif case == "num_old-0":
        loss = CF.margin_ranking_loss(s, torch.tensor([0, 1, 4, 3]), 0)
    else:
        loss = CF.margin_ranking_loss(s, torch.tensor([0, 1, 4, 3]), 5)
    assert loss.shape == () and loss.item() == 0.0 and loss.requires_grad
    (grad,) = _grad(loss, s)
    assert torch.count_nonzero(grad) == 0
    none = CF.margin_ranking_loss(s, torch.tensor([3, 4, 4, 3]), 3, reduction="none")
    assert none.shape == (4,) and torch.count_nonzero(none) == 0


def test_margin_ranking_one_sample_and_k_clipped():
    s = torch.tensor([[0.2, 0.9, 0.1, 0.4]], dtype=D64, requires_grad=True)      # one anchor, two new classes
    loss = CF.margin_ranking_loss(s, torch.tensor([0]), 2, margin=0.5, k=10)
    # pairs: 0.5 − 0.2 + 0.4 = 0.7 and 0.5 − 0.2 + 0.1 = 0.4, mean 0.55
    _close(loss, torch.tensor(0.55, dtype=D64))
    _close(CF.margin_ranking_loss(s, torch.tensor([0]), 2, k=10, pair_reduction="sum_over_k"),
           torch.tensor(1.1, dtype=D64))


def test_margin_ranking_huge_values():
    s = torch.tensor([[1e4, -1e4, 1e4], [-1e4, 1e4, -1e4]], requires_grad=True)
    loss = CF.margin_ranking_loss(s, torch.tensor([0, 1]), 2, k=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx((0.5 + 0.0) / 2 + 0.0)                  # 0.5 − 1e4 + 1e4; 0.5 − 1e4 − 1e4 < 0


def test_margin_ranking_dtypes_and_errors():
    s, y = torch.rand(3, 4), torch.tensor([0, 2, 3])
    assert CF.margin_ranking_loss(s, y, 2).dtype == torch.float32
    assert CF.margin_ranking_loss(s.double(), y, 2).dtype == D64
    assert CF.margin_ranking_loss(s.bfloat16(), y, 2).dtype == torch.float32
    with pytest.raises(LossArgumentError, match="num_old"):
        CF.margin_ranking_loss(s, y, 5)
    with pytest.raises(LossArgumentError, match="k"):
        CF.margin_ranking_loss(s, y, 2, k=0)
    with pytest.raises(LossTypeError):
        CF.margin_ranking_loss(s, y, 2, k=1.5)
    with pytest.raises(LossArgumentError, match="margin"):
        CF.margin_ranking_loss(s, y, 2, margin=-0.1)
    with pytest.raises(LossArgumentError, match="pair_reduction"):
        CF.margin_ranking_loss(s, y, 2, pair_reduction="sum")
    with pytest.raises(LossArgumentError, match=r"class indices in \[0, 4\)"):
        CF.margin_ranking_loss(s, torch.tensor([0, 2, 4]), 2)
    with pytest.raises(LossArgumentError, match=r"class indices in \[0, 4\)"):
        CF.margin_ranking_loss(s, torch.tensor([0, -100, 1]), 2)
    with pytest.raises(LossTypeError):
        CF.margin_ranking_loss(s, y.float(), 2)


# =========================================================================== POD-spatial
def _maps(gen, batch, shapes, scale=1.0, grad=False):
    return [_rand(gen, batch, *shape, scale=scale, grad=grad) for shape in shapes]


SHAPES = [(2, 3, 2), (3, 2, 2), (1, 1, 3)]


@pytest.mark.parametrize("batch", [1, 3])
def test_pod_spatial_matches_reference(batch, g):
    student = _maps(g, batch, SHAPES, grad=True)
    teacher = [(a.detach() + 0.3 * torch.randn(a.shape, generator=g, dtype=D64)).requires_grad_() for a in student]
    got = CF.pod_spatial_loss(student, teacher)
    want = ref_pod_spatial_per_sample(student, teacher)
    _close(got, want.mean())
    _close(CF.pod_spatial_loss(student, teacher, reduction="none"), want)
    _close(CF.pod_spatial_loss(tuple(student), tuple(teacher), reduction="sum"), want.sum())
    grads = _grad(got, *student, *teacher)
    want_grads = _grad(want.mean(), *student)
    for a, b in zip(grads[:len(student)], want_grads):
        _close(a, b)
    assert all(torch.count_nonzero(gr) == 0 for gr in grads[len(student):])     # the teacher is detached


def test_pod_spatial_single_layer_is_the_official_formula(g):
    a, b = _rand(g, 4, 3, 5, 2), _rand(g, 4, 3, 5, 2)
    pa = F.normalize(torch.cat([a.pow(2).sum(3).view(4, -1), a.pow(2).sum(2).view(4, -1)], -1), dim=1, p=2)
    pb = F.normalize(torch.cat([b.pow(2).sum(3).view(4, -1), b.pow(2).sum(2).view(4, -1)], -1), dim=1, p=2)
    _close(CF.pod_spatial_loss([a], [b]), torch.mean(torch.linalg.vector_norm(pa - pb, dim=-1)))


def test_pod_spatial_gradcheck(g):
    teacher = _maps(g, 2, SHAPES[:2])
    assert torch.autograd.gradcheck(lambda a, b: CF.pod_spatial_loss([a, b], teacher),
                                    tuple(_maps(g, 2, SHAPES[:2], grad=True)))


def test_pod_spatial_identical_zero_and_huge_maps(g):
    student = _maps(g, 2, SHAPES, grad=True)
    same = CF.pod_spatial_loss(student, [a.detach().clone() for a in student])   # first step of a task
    assert same.item() == 0.0
    for grad in _grad(same, *student):
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad) == 0
    zeros = [torch.zeros(2, 2, 3, 2, dtype=D64, requires_grad=True)]
    loss = CF.pod_spatial_loss(zeros, [torch.ones(2, 2, 3, 2, dtype=D64)])
    assert loss.item() == pytest.approx(1.0)                                     # ‖0 − unit vector‖
    assert torch.isfinite(_grad(loss, *zeros)[0]).all()
    huge = [torch.full((1, 2, 2, 2), 1e4, requires_grad=True)]
    out = CF.pod_spatial_loss(huge, [torch.randn(1, 2, 2, 2) * 1e4])
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(huge[0].grad).all()


def test_pod_spatial_gradient_keeps_channels_last(g):
    """The gradient of a channels_last map is channels_last (the sums' backward alone gives NCHW, which sends a
    channels_last network's batch-norm backward down the slow path); values equal the NCHW map's."""
    plain = _maps(g, 3, [(4, 5, 3), (2, 3, 3)], grad=True)
    fast = [a.detach().to(memory_format=torch.channels_last).requires_grad_() for a in plain]
    teacher = _maps(g, 3, [(4, 5, 3), (2, 3, 3)])
    want = _grad(CF.pod_spatial_loss(plain, teacher), *plain)
    got = _grad(CF.pod_spatial_loss(fast, teacher), *fast)
    for a, b in zip(got, want):
        assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        _close(a, b)
    assert _grad(CF.pod_spatial_loss(plain, teacher), *plain)[0].is_contiguous()   # NCHW stays NCHW


def test_pod_spatial_dtypes():
    a = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    assert CF.pod_spatial_loss(a, [x * 2 for x in a]).dtype == torch.float32
    assert CF.pod_spatial_loss([x.double() for x in a], a).dtype == D64
    assert CF.pod_spatial_loss([x.half() for x in a], [x.half() for x in a]).dtype == torch.float32


def test_pod_spatial_errors():
    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(LossArgumentError, match="same number"):
        CF.pod_spatial_loss([a, a], [a])
    with pytest.raises(LossArgumentError, match="at least one"):
        CF.pod_spatial_loss([], [])
    with pytest.raises(LossArgumentError, match="same shape"):
        CF.pod_spatial_loss([a], [a[:, :2]])
    with pytest.raises(LossArgumentError, match=r"\[B, C, H, W\]"):
        CF.pod_spatial_loss([a[0]], [a[0]])
    with pytest.raises(LossArgumentError, match="batch"):
        CF.pod_spatial_loss([a, a[:1]], [a, a[:1]])
    with pytest.raises(LossTypeError):
        CF.pod_spatial_loss(a, a)                                                # a tensor, not a list of maps
    with pytest.raises(LossTypeError):
        CF.pod_spatial_loss([a.long()], [a.long()])


# =========================================================================== PODNet NCA
def _nca_batch(gen, batch, num_classes, sim_scale=1.0):
    s = (-4.0 * torch.rand(batch, num_classes, generator=gen, dtype=D64)) * sim_scale   # LSC range [−4, 0]
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return s.requires_grad_(), y


@pytest.mark.parametrize("batch, num_classes", [(1, 3), (6, 5), (4, 2)])
def test_nca_code_matches_reference_and_official_transcription(batch, num_classes, g):
    s, y = _nca_batch(g, batch, num_classes)
    eta = torch.tensor(1.7, dtype=D64, requires_grad=True)
    got = CF.podnet_nca_loss(s, y, eta)
    want = ref_nca_code(s, y, eta).mean()
    _close(got, want)
    for a, b in zip(_grad(got, s, eta), _grad(want, s, eta)):
        _close(a, b)
    official = official_nca_transcription(s, y, eta, 0.6)
    _close(got, official)
    for a, b in zip(_grad(got, s, eta), _grad(official, s, eta)):
        _close(a, b)
    _close(CF.podnet_nca_loss(s, y, eta, reduction="none"), ref_nca_code(s, y, eta))
    _close(CF.podnet_nca_loss(s, y, 1.7, reduction="sum"), ref_nca_code(s, y, 1.7).sum())


def test_nca_code_does_not_depend_on_margin(g):
    s, y = _nca_batch(g, 5, 4)
    eta = torch.tensor(2.5, dtype=D64, requires_grad=True)
    base = CF.podnet_nca_loss(s, y, eta, margin=0.6)
    base_grads = _grad(base, s, eta)
    for margin in (0.0, 0.3, 2.0):
        other = CF.podnet_nca_loss(s, y, eta, margin=margin)
        assert torch.equal(other, base)
        for a, b in zip(_grad(other, s, eta), base_grads):
            assert torch.equal(a, b)
        _close(official_nca_transcription(s, y, eta, margin), base)   # the official code: margin cancels too


def test_nca_code_is_plain_ce_when_the_target_is_the_argmax(g):
    s, _ = _nca_batch(g, 6, 5)
    y = s.detach().argmax(1)
    eta = torch.tensor(3.0, dtype=D64, requires_grad=True)
    got = CF.podnet_nca_loss(s, y, eta)
    want = F.cross_entropy(eta * s, y)
    _close(got, want)
    for a, b in zip(_grad(got, s, eta), _grad(want, s, eta)):
        _close(a, b)


@pytest.mark.parametrize("margin", [0.6, 0.0, 1.5])
def test_nca_paper_matches_reference(margin, g):
    s, y = _nca_batch(g, 6, 4)
    eta = torch.tensor(2.0, dtype=D64, requires_grad=True)
    got = CF.podnet_nca_loss(s, y, eta, margin=margin, mode="paper", reduction="none")
    want = ref_nca_paper(s, y, eta, margin)
    _close(got, want)
    for a, b in zip(_grad(got.mean(), s, eta), _grad(want.mean(), s, eta)):
        _close(a, b)


def test_nca_paper_hinge_and_margin_on_target_only():
    s = torch.tensor([[0.0, -3.0, -3.0]], dtype=D64)            # a confident sample
    assert float(CF.podnet_nca_loss(s, torch.tensor([0]), 1.0, margin=0.6, mode="paper")) == 0.0   # hinged
    assert float(CF.podnet_nca_loss(s, torch.tensor([0]), 1.0, margin=0.6, mode="code")) > 0.0
    # moving the margin by Δ moves the (un-hinged) loss by η·Δ
    s2 = torch.tensor([[-1.0, -0.5, -0.2]], dtype=D64)
    a = CF.podnet_nca_loss(s2, torch.tensor([0]), 2.0, margin=0.1, mode="paper")
    b = CF.podnet_nca_loss(s2, torch.tensor([0]), 2.0, margin=0.6, mode="paper")
    _close(b - a, torch.tensor(1.0, dtype=D64))


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_nca_gradcheck(mode, g):
    s, y = _nca_batch(g, 4, 4)
    offsets = torch.log(torch.tensor([20.0, 5.0, 500.0, 1.0], dtype=D64)).requires_grad_()
    inputs = (s.detach().clone().requires_grad_(), torch.tensor(1.3, dtype=D64, requires_grad=True), offsets)
    assert torch.autograd.gradcheck(lambda a, e, o: CF.podnet_nca_loss(a, y, e, mode=mode, class_offsets=o), inputs)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_nca_class_offsets_match_reference(mode, g):
    s, y = _nca_batch(g, 5, 4)
    eta = torch.tensor(1.5, dtype=D64, requires_grad=True)
    counts = torch.tensor([20.0, 20.0, 500.0, 300.0], dtype=D64)
    offsets = counts.log()
    got = CF.podnet_nca_loss(s, y, eta, mode=mode, class_offsets=offsets, reduction="none")
    want = ref_nca_code(s, y, eta, offsets) if mode == "code" else ref_nca_paper(s, y, eta, 0.6, offsets)
    _close(got, want)
    for a, b in zip(_grad(got.sum(), s, eta), _grad(want.sum(), s, eta)):
        _close(a, b)
    per_sample = offsets.expand(5, 4).clone()
    _close(CF.podnet_nca_loss(s, y, eta, mode=mode, class_offsets=per_sample, reduction="none"), got)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_nca_count_zero_offset_is_exact_and_has_no_nan(mode):
    """A class with count 0 gets the offset −inf (as balanced_softmax_offsets): it leaves the normaliser exactly,
    values and gradients stay finite (targets in other classes); a target in it gives +inf, never NaN."""
    s = torch.tensor([[-0.5, -1.0, -2.0, -0.1], [-3.0, -0.2, -0.4, -1.0]], dtype=D64, requires_grad=True)
    y = torch.tensor([0, 1])
    eta = torch.tensor(2.0, dtype=D64, requires_grad=True)
    offsets = torch.log(torch.tensor([5.0, 3.0, 0.0, 7.0], dtype=D64))          # class 2: count 0 → −inf
    got = CF.podnet_nca_loss(s, y, eta, mode=mode, class_offsets=offsets, reduction="none")
    keep = [0, 1, 3]                                                              # the reference skips class 2
    want = (ref_nca_code(s[:, keep], y, eta, offsets[keep]) if mode == "code"
            else ref_nca_paper(s[:, keep], y, eta, 0.6, offsets[keep]))
    _close(got, want)
    grads = _grad(got.sum(), s, eta)
    for a, b in zip(grads, _grad(want.sum(), s, eta)):
        assert torch.isfinite(a).all()
    assert torch.count_nonzero(grads[0][:, 2]) == 0
    _close(grads[0][:, keep], _grad(want.sum(), s)[0][:, keep])
    bad = CF.podnet_nca_loss(s, torch.tensor([2, 1]), eta, mode=mode, class_offsets=offsets, reduction="none")
    assert bad[0] == math.inf and torch.isfinite(bad[1])
    assert all(torch.isfinite(gr).all() for gr in _grad(bad.sum(), s, eta))


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_nca_huge_similarities_are_finite(mode):
    s = torch.tensor([[1e4, -1e4, 1e4], [-1e4, -1e4, 1e4], [5e3, 0.0, -5e3]], requires_grad=True)
    eta = torch.tensor(1.0, requires_grad=True)
    loss = CF.podnet_nca_loss(s, torch.tensor([0, 1, 2]), eta, mode=mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and torch.isfinite(eta.grad)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_nca_single_class_is_zero(mode):
    s = torch.tensor([[-0.3], [-1.2]], dtype=D64, requires_grad=True)
    loss = CF.podnet_nca_loss(s, torch.tensor([0, 0]), 2.0, mode=mode)
    assert loss.item() == 0.0
    assert torch.isfinite(_grad(loss, s)[0]).all()
    only = torch.tensor([[-0.3, -0.1]], dtype=D64, requires_grad=True)           # all other classes at −inf
    out = CF.podnet_nca_loss(only, torch.tensor([0]), 2.0, mode=mode,
                             class_offsets=torch.tensor([0.0, -math.inf], dtype=D64))
    assert out.item() == 0.0 and torch.isfinite(_grad(out, only)[0]).all()


def test_nca_scale_forms_and_dtypes(g):
    s, y = _nca_batch(g, 3, 4)
    s = s.detach()
    ref = CF.podnet_nca_loss(s, y, 1.5)
    _close(CF.podnet_nca_loss(s, y, torch.tensor([1.5], dtype=D64)), ref)
    _close(CF.podnet_nca_loss(s, y, torch.tensor(1.5, dtype=torch.float32)), ref, atol=1e-6, rtol=1e-6)
    eta = torch.nn.Parameter(torch.tensor(1.5))                                   # float32 parameter, float64 sims
    out = CF.podnet_nca_loss(s, y, eta)
    out.backward()
    assert out.dtype == D64 and eta.grad is not None and eta.grad.dtype == torch.float32
    assert CF.podnet_nca_loss(s.float(), y, 1.0).dtype == torch.float32
    assert CF.podnet_nca_loss(s.bfloat16(), y, 1.0, mode="paper").dtype == torch.float32


def test_nca_errors():
    s, y = -torch.rand(2, 3), torch.tensor([0, 2])
    with pytest.raises(LossArgumentError, match="mode"):
        CF.podnet_nca_loss(s, y, 1.0, mode="hinge")
    with pytest.raises(LossArgumentError, match="scale"):
        CF.podnet_nca_loss(s, y, torch.ones(2))
    with pytest.raises(LossArgumentError, match="scale"):
        CF.podnet_nca_loss(s, y, math.nan)
    with pytest.raises(LossTypeError, match="scale"):
        CF.podnet_nca_loss(s, y, "1")
    with pytest.raises(LossArgumentError, match="margin"):
        CF.podnet_nca_loss(s, y, 1.0, margin=math.inf)
    with pytest.raises(LossArgumentError, match="class_offsets"):
        CF.podnet_nca_loss(s, y, 1.0, class_offsets=torch.zeros(4))
    with pytest.raises(LossArgumentError, match="class_offsets"):
        CF.podnet_nca_loss(s, y, 1.0, class_offsets=torch.tensor([0.0, math.nan, 0.0]))
    with pytest.raises(LossArgumentError, match="class_offsets"):
        CF.podnet_nca_loss(s, y, 1.0, class_offsets=torch.full((3,), -math.inf))
    with pytest.raises(LossArgumentError, match=r"class indices in \[0, 3\)"):
        CF.podnet_nca_loss(s, torch.tensor([0, 3]), 1.0)
    with pytest.raises(LossArgumentError, match="reduction"):
        CF.podnet_nca_loss(s, y, 1.0, reduction="batchmean")


# =========================================================================== PODNet + BalancedS-CE
def test_podnet_bsce_reuses_balanced_softmax_cross_entropy(g):
    """PODNet + BalancedS-CE is CE(η·s + log n, y) (cosine-family.md §2.5): cil_losses' BalancedS-CE on the
    scaled similarities, gradient into η, a class with count 0 leaving the normaliser without NaN."""
    s, _ = _nca_batch(g, 5, 4)
    y = torch.tensor([0, 1, 3, 3, 0])
    eta = torch.tensor(1.8, dtype=D64, requires_grad=True)
    counts = torch.tensor([20.0, 20.0, 0.0, 480.0], dtype=D64)
    got = cil_losses.balanced_softmax_cross_entropy(eta * s, y, counts)
    keep = [0, 1, 3]
    want = F.cross_entropy(eta * s[:, keep] + counts[keep].log(), torch.tensor([0, 1, 2, 2, 0]))
    _close(got, want)
    grads = _grad(got, s, eta)
    want_grads = _grad(want, s, eta)
    _close(grads[0][:, keep], want_grads[0][:, keep])
    _close(grads[1], want_grads[1])
    assert torch.count_nonzero(grads[0][:, 2]) == 0


# =========================================================================== docs
def test_docstring_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    tests = [t for t in finder.find(CF, "cosine_family", globs={}) if t.examples]
    named = {t.name.rsplit(".", 1)[-1] for t in tests}
    assert set(CF.__all__) <= named, sorted(set(CF.__all__) - named)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("name, paper", [
    ("less_forget_loss", "CVPR 2019"), ("lucir_lambda", "CVPR 2019"), ("margin_ranking_loss", "CVPR 2019"),
    ("pod_spatial_loss", "ECCV 2020"), ("pod_flat_loss", "ECCV 2020"), ("podnet_lambdas", "ECCV 2020"),
    ("podnet_nca_loss", "ECCV 2020"),
])
def test_docstrings_name_the_paper(name, paper):
    assert paper in getattr(CF, name).__doc__
