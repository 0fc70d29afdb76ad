"""JIOC: input coordination, output coordination, new-head suppression, total loss and ablations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cil_losses as L
from cil_losses.errors import LossArgumentError
from cil_losses.jioc import InputCoordinationFunction

OPTIONS = [(True, False), (False, False), (True, True), (False, True)]
OPTION_IDS = ["detached", "in-graph", "detached-normalised", "in-graph-normalised"]


@pytest.mark.parametrize("detach, normalize", OPTIONS, ids=OPTION_IDS)
def test_input_coordination_matches_reference(detach, normalize, gen, rand, ref, grad_of, close):
    z = rand(gen, 7, 5, grad=True)
    y = torch.randint(0, 5, (7,), generator=gen)
    got = L.input_coordination_ce(z, y, detach_weight=detach, normalize=normalize)
    want = ref.input_coordination(z, y, detach, normalize)
    close(got, want)
    close(grad_of(got, z)[0], grad_of(want, z)[0])


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
def test_input_coordination_gradcheck(normalize):
    """With δ in the graph the Function's backward is the true derivative, so gradcheck applies.

    (With a detached δ the backward deliberately ignores ∂δ/∂z; that mode is checked against the
    reference, which detaches δ explicitly, in the test above.)
    """
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda x: InputCoordinationFunction.apply(x, y, False, normalize), (z,))
    upstream = torch.randn(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: InputCoordinationFunction.apply(x, y, False, normalize) * upstream, (z,)
    )


def test_input_coordination_reduction_none(gen, rand, close):
    z, y = rand(gen, 4, 3), torch.tensor([0, 1, 2, 0])
    per = L.input_coordination_ce(z, y, reduction="none", normalize=True)
    assert per.shape == (4,)
    close(per.mean(), L.input_coordination_ce(z, y, normalize=True))


def test_input_coordination_saturated_logits_are_finite():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]], requires_grad=True)
    for normalize in (False, True):
        for detach in (True, False):
            loss = L.input_coordination_ce(z, torch.tensor([0, 1]), detach_weight=detach, normalize=normalize)
            (g,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(loss) and torch.isfinite(g).all() and float(loss.detach()) == 0.0
    one = L.input_coordination_ce(torch.randn(1, 3), torch.tensor([2]), normalize=True)
    assert torch.isfinite(one)


def test_input_coordination_target_range():
    with pytest.raises(LossArgumentError, match="target"):
        L.input_coordination_ce(torch.randn(2, 3), torch.tensor([0, 3]))


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0], ids=["no-memory", "mixed", "all-memory"])
def test_suppression_matches_reference(squared, share, gen, rand, ref, grad_of, close):
    z = rand(gen, 6, 7, grad=True)
    memory = torch.rand(6, generator=gen) < share
    got = L.new_head_suppression(z, memory, 4, squared=squared)
    want = ref.suppression(z, memory, 4, squared)
    close(got, want)
    close(grad_of(got, z)[0], grad_of(want, z)[0])
    assert got.requires_grad


def test_suppression_without_new_classes_is_zero():
    assert float(L.new_head_suppression(torch.randn(3, 4), torch.ones(3, dtype=torch.bool), 4)) == 0.0


def _components(ref, z, y, t, boundaries, memory, use_ic, use_oc, use_sup):
    num_old = boundaries[-1]
    cls = ref.input_coordination(z, y) if use_ic else F.cross_entropy(z, y)
    dist = ref.output_coordination_loop(z, t, boundaries) if use_oc else ref.soft_ce(z[:, :num_old], t, 2.0)
    sup = ref.suppression(z, memory, num_old) if use_sup else 0.0
    return cls, dist, sup


@pytest.mark.parametrize(
    "use_ic, use_oc, use_sup",
    [(False, False, False), (True, False, False), (False, True, False), (False, True, True), (True, True, True)],
    ids=["CE+KD", "IC+KD", "CE+OC", "CE+OC+sup", "JIOC"],
)
def test_jioc_ablation_rows(use_ic, use_oc, use_sup, gen, rand, ref, grad_of, close):
    boundaries = [0, 2, 4, 6]
    z, t = rand(gen, 8, 9, grad=True), rand(gen, 8, 6)
    y = torch.randint(0, 9, (8,), generator=gen)
    memory = y < 6
    got = L.jioc_loss(z, y, t, boundaries, memory, gamma1=0.7, gamma2=1.3, use_ic=use_ic, use_oc=use_oc,
                      use_sup=use_sup)
    cls, dist, sup = _components(ref, z, y, t, boundaries, memory, use_ic, use_oc, use_sup)
    want = cls + 0.7 * dist + 1.3 * sup
    close(got, want)
    close(grad_of(got, z)[0], grad_of(want, z)[0])


def test_jioc_defaults_parts_and_phase_zero(gen, rand, ref, close):
    z, t = rand(gen, 4, 5), rand(gen, 4, 3)
    y, memory = torch.tensor([0, 4, 3, 1]), torch.tensor([True, False, False, True])
    total, parts = L.jioc_loss(z, y, t, [0, 3], memory, return_parts=True)
    assert set(parts) == {"ic", "oc", "sup"}
    close(total, parts["ic"] + parts["oc"] + parts["sup"])
    close(L.jioc_loss(z, y, None, [0], memory), ref.input_coordination(z, y))
    with pytest.raises(LossArgumentError, match="teacher_logits is required"):
        L.jioc_loss(z, y, None, [0, 3], memory)
