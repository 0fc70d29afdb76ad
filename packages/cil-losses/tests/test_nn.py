"""The nn.Module wrappers give the functional results and keep their state across devices/checkpoints."""

from __future__ import annotations

import pytest
import torch

import cil_losses as L
from cil_losses import nn as LN


def test_wrappers_equal_the_functions(gen, rand, close):
    z, t = rand(gen, 6, 8), rand(gen, 6, 6)
    memory = torch.tensor([True, False, True, False, False, False])
    y = torch.tensor([1, 6, 4, 7, 6, 7])
    counts = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    lost = [1.0, 0.0, 3.0, 2.0, 0.0, 9.0]
    close(LN.KDLoss(3.0, t_squared=True)(z[:, :6], t), L.kd_loss(z[:, :6], t, 3.0, t_squared=True))
    close(LN.LogitAdjustedCE(torch.arange(8.0))(z, y), L.logit_adjusted_cross_entropy(z, y, torch.arange(8.0)))
    close(LN.BalancedSoftmaxCE(counts, num_old=6, alpha=0.3)(z, y),
          L.balanced_softmax_cross_entropy(z, y, counts, 6, 0.3))
    close(LN.SeparatedSoftmaxCE(6)(z, y, memory), L.separated_softmax_cross_entropy(z, y, 6, memory))
    close(LN.TaskWiseKD([0, 2, 6])(z, t), L.task_wise_kd(z, t, [0, 2, 6]))
    close(LN.OutputCoordinationKD([0, 2, 6])(z, t), L.output_coordination_kd(z, t, [0, 2, 6]))
    close(LN.InputCoordinationCE(normalize=True)(z, y), L.input_coordination_ce(z, y, normalize=True))
    close(LN.NewHeadSuppression(6, squared=True)(z, memory), L.new_head_suppression(z, memory, 6, squared=True))
    close(LN.JIOCLoss([0, 2, 6], gamma1=0.5)(z, y, t, memory), L.jioc_loss(z, y, t, [0, 2, 6], memory, gamma1=0.5))
    close(LN.DAKDLoss(lost)(z[:, :6].float(), t.float()), L.dakd_loss(z[:, :6].float(), t.float(), lost))
    assert LN.GradientReweighter is L.GradientReweighter


def test_balanced_module_set_counts_and_state_dict():
    module = LN.BalancedSoftmaxCE([1.0, 2.0, 3.0])
    module.set_counts([1.0, 2.0, 3.0, 4.0], num_old=3, eps=1.0)
    assert module.offsets.shape == (4,)
    torch.testing.assert_close(module.offsets, L.balanced_softmax_offsets([1.0, 2.0, 3.0, 4.0], 3, eps=1.0))
    restored = LN.BalancedSoftmaxCE([1.0])
    restored.load_state_dict(module.state_dict())
    torch.testing.assert_close(restored.offsets, module.offsets)
    assert "num_old=3" in repr(module)


def test_module_argument_errors():
    with pytest.raises(L.LossArgumentError, match="boundaries"):
        LN.TaskWiseKD([1, 2])
    with pytest.raises(L.LossArgumentError, match="T must be"):
        LN.KDLoss(-1.0)
    with pytest.raises(L.LossArgumentError, match="reduction"):
        LN.InputCoordinationCE(reduction="avg")


def test_balanced_module_checks_its_inputs(gen, rand):
    module = LN.BalancedSoftmaxCE([1.0, 2.0, 3.0])
    z, y = rand(gen, 4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.isfinite(module(z, y))
    with pytest.raises(L.LossArgumentError, match="set_counts"):
        module(rand(gen, 4, 5), y)                    # counts of 3 classes, logits of 5
    with pytest.raises(L.LossTypeError, match="target"):
        module(z, y.double())
    with pytest.raises(L.LossArgumentError, match="target"):
        module(z, y[:3])
    with pytest.raises(L.LossTypeError, match="logits"):
        module(z.long(), y)
    with pytest.raises(L.LossArgumentError, match="logits"):
        module(z[0], y)
