"""IncrementalLinear and CosineLinear against plain references; expansion semantics; errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cil_models import CosineLinear, HeadStateError, IncrementalLinear, ModelConfigError, normalized_class_means

SEEDS = (0, 1, 2)
SPLITS = ([5], [4, 3], [2, 3, 1, 4])


def build(cls, splits, dtype=torch.float64, **kw):
    head = cls(6, **kw).to(dtype)
    for size in splits:
        head.expand(size)
    return head


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_linear_matches_single_matrix_reference(seed, splits, bias, fused):
    torch.manual_seed(seed)
    head = build(IncrementalLinear, splits, bias=bias, fused=fused)
    # Reference: one weight matrix with the blocks' rows stacked by hand, then x Wᵀ + b.
    weight = torch.zeros(sum(splits), 6, dtype=torch.float64)
    bias_vec = torch.zeros(sum(splits), dtype=torch.float64)
    row = 0
    for block in head.blocks:
        for r in range(block.out_features):
            weight[row] = block.weight[r].detach()
            if bias:
                bias_vec[row] = block.bias[r].detach()
            row += 1
    weight.requires_grad_(True)
    bias_vec.requires_grad_(bias)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(5, sum(splits), dtype=torch.float64)
    out = head(x)
    ref = x_ref @ weight.T + (bias_vec if bias else 0.0)
    torch.testing.assert_close(out, ref)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    grads = torch.cat([b.weight.grad for b in head.blocks])
    torch.testing.assert_close(grads, weight.grad)
    if bias:
        torch.testing.assert_close(torch.cat([b.bias.grad for b in head.blocks]), bias_vec.grad)
        torch.testing.assert_close(head.full_bias(), bias_vec.detach())
    else:
        assert head.full_bias() is None
    torch.testing.assert_close(head.full_weight(), weight.detach())


def test_full_weight_is_differentiable():
    head = build(IncrementalLinear, [2, 3])
    head.full_weight().sum().backward()
    assert all(torch.all(b.weight.grad == 1) for b in head.blocks)


def test_gradcheck_multi_block_linear_and_cosine():
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    heads = [build(cls, [2, 3], fused=fused) for cls in (IncrementalLinear, CosineLinear) for fused in (False, True)]
    for head in heads:
        params = list(head.parameters())
        names = [n for n, _ in head.named_parameters()]

        def fn(x, *ps, head=head, names=names):
            state = dict(zip(names, ps))
            return torch.func.functional_call(head, state, (x,))

        assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_(True) for p in params]))


@pytest.mark.parametrize("cls", [IncrementalLinear, CosineLinear])
@pytest.mark.parametrize(("in_features", "splits", "new"), [(6, [3, 2], 4), (512, [10], 10), (64, [2, 3, 5], 40)])
def test_expand_keeps_old_outputs_and_parameters_bit_identical(cls, in_features, splits, new):
    torch.manual_seed(0)
    head = cls(in_features)
    for size in splits:
        head.expand(size)
    x = torch.randn(128, in_features)
    before = head(x).detach().clone()
    old_params = {n: p.detach().clone() for n, p in head.named_parameters()}
    old_objects = {n: p for n, p in head.named_parameters()}
    head.expand(new)
    after = head(x)
    assert after.shape == (128, sum(splits) + new)
    assert torch.equal(after[:, : sum(splits)], before)
    for name, value in old_params.items():
        param = dict(head.named_parameters())[name]
        assert param is old_objects[name] and torch.equal(param, value)


@pytest.mark.parametrize("cls", [IncrementalLinear, CosineLinear])
def test_fused_mode_keeps_old_outputs_to_rounding(cls):
    torch.manual_seed(0)
    head = cls(512, fused=True)
    head.expand(10)
    x = torch.randn(128, 512)
    before = head(x).detach().clone()
    head.expand(10)
    torch.testing.assert_close(head(x)[:, :10], before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [IncrementalLinear, CosineLinear])
def test_training_updates_old_and_new_blocks(cls):
    torch.manual_seed(0)
    head = build(cls, [3, 2], dtype=torch.float32)
    before = [b.weight.detach().clone() for b in head.blocks]
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    F.cross_entropy(head(torch.randn(16, 6)), torch.randint(0, 5, (16,))).backward()
    opt.step()
    assert all(not torch.equal(b.weight, w) for b, w in zip(head.blocks, before))


def test_bookkeeping():
    head = build(IncrementalLinear, [4, 2, 3])
    assert head.num_classes == 9 and head.num_tasks == 3
    assert head.task_sizes == [4, 2, 3]
    assert head.boundaries == [0, 4, 6, 9]
    assert head.task_slices == [slice(0, 4), slice(4, 6), slice(6, 9)]
    assert head.task_slice(1) == slice(4, 6) and head.task_slice(-1) == slice(6, 9)
    with pytest.raises(HeadStateError, match=r"task must be in \[-3, 2\].*got 3"):
        head.task_slice(3)
    head.expand_to([4, 2, 3, 5, 1])
    assert head.task_sizes == [4, 2, 3, 5, 1]
    with pytest.raises(HeadStateError, match="do not start with the head's current task sizes"):
        head.expand_to([4, 3])
    empty = IncrementalLinear(6)
    assert empty.num_classes == 0 and empty.boundaries == [0] and empty.task_sizes == []
    with pytest.raises(HeadStateError, match="no classes yet; call expand"):
        empty(torch.randn(2, 6))


def test_new_blocks_follow_device_and_dtype():
    head = IncrementalLinear(6).to(torch.float64)
    head.expand(2)
    assert head.blocks[0].weight.dtype == torch.float64
    head.blocks.to(torch.float16)
    head.expand(3)
    assert head.blocks[1].weight.dtype == torch.float16
    cos = CosineLinear(6).double()
    cos.expand(2)
    assert cos.blocks[0].weight.dtype == torch.float64 and cos.scale.dtype == torch.float64


def test_kaiming_and_torch_inits():
    torch.manual_seed(0)
    head = IncrementalLinear(400)
    head.expand(200)
    bound = math.sqrt(3.0 / 400)
    w = head.blocks[0].weight
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
    assert torch.all(head.blocks[0].bias == 0)
    torch_init = IncrementalLinear(400, init="torch")
    torch_init.expand(200)
    w, b = torch_init.blocks[0].weight, torch_init.blocks[0].bias
    assert w.abs().max() <= 1 / 20 and w.abs().max() > 0.98 / 20 and b.abs().max() > 0


def test_explicit_initial_rows():
    head = IncrementalLinear(3)
    weight, bias = torch.arange(6.0).view(2, 3), torch.tensor([1.0, -1.0])
    head.expand(2, weight=weight, bias=bias)
    assert torch.equal(head.full_weight(), weight) and torch.equal(head.full_bias(), bias)
    with pytest.raises(ModelConfigError, match=r"weight must have shape \[2, 3\], got \[3, 3\]"):
        head.expand(2, weight=torch.zeros(3, 3))
    with pytest.raises(ModelConfigError, match="bias was given but this head has no bias"):
        IncrementalLinear(3, bias=False).expand(2, bias=bias)
    with pytest.raises(ModelConfigError, match="n_new must be an int >= 1, got 0"):
        head.expand(0)
    with pytest.raises(TypeError, match="n_new must be an int"):
        head.expand(2.0)
    with pytest.raises(ModelConfigError, match="init must be one of 'kaiming', 'torch', 'normal'; got 'xavier'"):
        IncrementalLinear(3, init="xavier")


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_weight_norms(p):
    torch.manual_seed(0)
    head = build(IncrementalLinear, [3, 4])
    reference = torch.stack([(row.abs() ** p).sum() ** (1 / p) for row in head.full_weight().detach()])
    norms = head.weight_norms(p)
    torch.testing.assert_close(norms, reference)
    assert not norms.requires_grad
    with pytest.raises(ModelConfigError, match="p must be a finite real number > 0"):
        head.weight_norms(0.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fused", [False, True])
def test_cosine_matches_reference(seed, fused):
    torch.manual_seed(seed)
    head = build(CosineLinear, [3, 2, 4], scale_init=4.0, fused=fused)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    rows = [r for b in head.blocks for r in b.weight]
    weight = torch.stack([r.detach() for r in rows]).requires_grad_(True)
    scale = head.scale.detach().clone().requires_grad_(True)
    # Reference: pairwise cosine similarity of every sample with every class row.
    ref = scale * F.cosine_similarity(x_ref.unsqueeze(1), weight.unsqueeze(0), dim=2, eps=0.0)
    out = head(x)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn_like(ref)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(head.scale.grad, scale.grad)
    torch.testing.assert_close(torch.cat([b.weight.grad for b in head.blocks]), weight.grad)
    assert out.abs().max() <= 4.0 + 1e-12
    assert head.full_bias() is None


def test_cosine_scale_options():
    fixed = CosineLinear(4, learn_scale=False, scale_init=16.0)
    fixed.expand(3)
    assert [n for n, _ in fixed.named_parameters()] == ["blocks.0.weight"]
    assert "scale" in fixed.state_dict() and float(fixed.scale) == 16.0
    learned = CosineLinear(4)
    assert learned.scale.item() == 1.0 and learned.scale.requires_grad
    with pytest.raises(ModelConfigError, match="scale_init must be a finite real number > 0, got -1.0"):
        CosineLinear(4, scale_init=-1.0)


def test_cosine_of_zero_feature_is_zero_not_nan():
    head = build(CosineLinear, [3])
    out = head(torch.zeros(2, 6, dtype=torch.float64))
    assert torch.equal(out, torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("cls", [IncrementalLinear, CosineLinear])
def test_bf16_autocast(cls):
    head = build(cls, [3, 2], dtype=torch.float32)
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), head(x), rtol=0.05, atol=0.05)


# ---- input growth (DER/FOSTER) and LUCIR imprinting -----------------------------------------


@pytest.mark.parametrize("cls", [IncrementalLinear, CosineLinear])
@pytest.mark.parametrize("new_columns", ["random", "zero"])
def test_add_input_features_keeps_old_columns(cls, new_columns):
    torch.manual_seed(0)
    head = build(cls, [3, 2])
    old = head.full_weight().detach().clone()
    head.blocks[0].weight.requires_grad_(False)
    head.add_input_features(4, new_columns)
    assert head.in_features == 10 and all(b.in_features == 10 for b in head.blocks)
    weight = head.full_weight().detach()
    assert torch.equal(weight[:, :6], old)
    assert not head.blocks[0].weight.requires_grad and head.blocks[1].weight.requires_grad
    if new_columns == "zero":
        assert torch.all(weight[:, 6:] == 0)
        x = torch.randn(4, 6, dtype=torch.float64)
        padded = torch.cat([x, torch.randn(4, 4, dtype=torch.float64)], dim=1)
        if cls is IncrementalLinear:  # z = [x, x'] [W, 0]ᵀ + b = x Wᵀ + b
            torch.testing.assert_close(head(padded), x @ old.T + head.full_bias().detach())
    else:
        bound = (3.0 / 10) ** 0.5 if head.init == "kaiming" else 1 / 10**0.5
        assert weight[:, 6:].abs().max() <= bound and weight[:, 6:].abs().max() > 0
    head.expand(2)
    assert head.blocks[2].weight.shape == (2, 10)
    head.keep_input_features(6, 10)
    assert head.in_features == 4 and torch.equal(head.full_weight().detach()[:5], weight[:, 6:])
    with pytest.raises(ModelConfigError, match="0 <= start < stop <= in_features = 4"):
        head.keep_input_features(2, 6)
    with pytest.raises(ModelConfigError, match="new_columns must be one of"):
        head.add_input_features(2, "ones")


def test_cosine_imprinting_follows_lucir():
    torch.manual_seed(0)
    head = build(CosineLinear, [4])
    feats = torch.randn(30, 6, dtype=torch.float64)
    labels = torch.arange(30) % 3
    means, _ = normalized_class_means(feats, labels, 3)
    old_norm = head.full_weight().detach().norm(dim=1).mean()
    head.expand_imprinted(means)
    rows = head.blocks[1].weight.detach()
    # Reference, written out: w_c = normalize(mean_i f_i/‖f_i‖) · mean_{j old} ‖w_j‖.
    for c in range(3):
        members = feats[labels == c]
        mean = (members / members.norm(dim=1, keepdim=True)).mean(dim=0)
        torch.testing.assert_close(rows[c], mean / mean.norm() * old_norm)
    assert head.task_sizes == [4, 3]
    first = build(CosineLinear, [])
    first.expand_imprinted(means * 7.0)
    torch.testing.assert_close(first.full_weight().detach().norm(dim=1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ModelConfigError, match="one nonzero row per new class"):
        head.expand_imprinted(torch.zeros(2, 6))
    with pytest.raises(ModelConfigError, match=r"class_means must be a tensor \[n_new, 6\]"):
        head.expand_imprinted(torch.zeros(6))
