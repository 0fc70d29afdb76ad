"""WA weight aligning and non-negative clipping against a plain reference."""

from __future__ import annotations

import pytest
import torch

from cil_models import CosineLinear, HeadStateError, IncrementalLinear, IncrementalNet, clip_nonnegative_, weight_align

SEEDS = (0, 1, 2)


def head_with_imbalance(seed, splits=(6, 4), new_scale=3.0):
    torch.manual_seed(seed)
    head = IncrementalLinear(8).double()
    for size in splits:
        head.expand(size)
    with torch.no_grad():
        head.blocks[-1].weight.mul_(new_scale)
        for block in head.blocks:
            block.bias.normal_()
    return head


def reference_gamma(weight, num_old, p):
    norms = [(row.abs() ** p).sum() ** (1.0 / p) for row in weight]
    old = sum(norms[:num_old]) / num_old
    new = sum(norms[num_old:]) / (len(norms) - num_old)
    return float(old / new)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_gamma_and_equal_mean_norms(seed, p):
    head = head_with_imbalance(seed)
    weight = head.full_weight().detach().clone()
    bias = head.full_bias().detach().clone()
    gamma = weight_align(head, 6, p=p)
    assert gamma == pytest.approx(reference_gamma(weight, 6, p), rel=1e-12)
    assert gamma < 1.0
    norms = head.weight_norms(p)
    torch.testing.assert_close(norms[:6].mean(), norms[6:].mean())
    after = head.full_weight()
    assert torch.equal(after[:6], weight[:6])
    torch.testing.assert_close(after[6:], gamma * weight[6:])
    assert torch.equal(head.full_bias(), bias)


def test_scale_bias_option():
    head = head_with_imbalance(0)
    bias = head.full_bias().detach().clone()
    gamma = weight_align(head, 6, scale_bias=True)
    assert torch.equal(head.full_bias()[:6], bias[:6])
    torch.testing.assert_close(head.full_bias()[6:], gamma * bias[6:])


def test_clamp_never_enlarges_new_rows():
    head = head_with_imbalance(1, new_scale=0.2)
    weight = head.full_weight().detach().clone()
    expected = reference_gamma(weight, 6, 2.0)
    assert expected > 1.0
    assert weight_align(head, 6, clamp=True) == 1.0
    assert torch.equal(head.full_weight(), weight)
    assert weight_align(head, 6) == pytest.approx(expected)


def test_new_classes_spanning_blocks_and_mid_block_split():
    head = head_with_imbalance(2, splits=(3, 2, 4))
    weight = head.full_weight().detach().clone()
    gamma = weight_align(head, 4)
    assert gamma == pytest.approx(reference_gamma(weight, 4, 2.0))
    after = head.full_weight()
    assert torch.equal(after[:4], weight[:4])
    torch.testing.assert_close(after[4:], gamma * weight[4:])


def test_accepts_network_and_rejects_bad_input():
    net = IncrementalNet("resnet8", in_channels=1)
    net.expand(3)
    net.expand(2)
    assert weight_align(net, net.boundaries[-2]) > 0
    with pytest.raises(HeadStateError, match="1 <= num_old < num_classes = 5"):
        weight_align(net, 5)
    with pytest.raises(HeadStateError, match="got 0"):
        weight_align(net, 0)
    cosine = CosineLinear(4)
    cosine.expand(2)
    cosine.expand(2)
    with pytest.raises(TypeError, match="needs an IncrementalLinear head"):
        weight_align(cosine, 2)
    with pytest.raises(TypeError, match="head must be an IncrementalLinear"):
        weight_align(torch.nn.Linear(3, 3), 1)
    zero = IncrementalLinear(4)
    zero.expand(2)
    zero.expand(2, weight=torch.zeros(2, 4))
    with pytest.raises(HeadStateError, match="weight aligning is undefined"):
        weight_align(zero, 2)


def test_clip_nonnegative():
    head = head_with_imbalance(0)
    weight, bias = head.full_weight().detach().clone(), head.full_bias().detach().clone()
    clip_nonnegative_(head)
    assert torch.equal(head.full_weight(), weight.clamp(min=0))
    assert torch.equal(head.full_bias(), bias)
    clip_nonnegative_(head, include_bias=True)
    assert torch.equal(head.full_bias(), bias.clamp(min=0))
    no_bias = IncrementalLinear(3, bias=False)
    no_bias.expand(2)
    clip_nonnegative_(no_bias, include_bias=True)
    assert (no_bias.full_weight() >= 0).all()
