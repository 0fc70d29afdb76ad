"""BiC bias correction against a per-slice reference; parameters, gradients and errors."""

from __future__ import annotations

import pytest
import torch

from cil_models import BiasCorrection, HeadStateError, ModelConfigError

SEEDS = (0, 1, 2)
BOUNDARIES = ([0, 4], [0, 3, 5], [0, 2, 3, 7, 8])


def random_layer(num_tasks, apply_to, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = BiasCorrection(apply_to).double()
    for _ in range(num_tasks):
        layer.add_task()
    with torch.no_grad():
        for a, b in zip(layer.alpha, layer.beta):
            a.copy_(torch.rand(1, generator=generator, dtype=torch.float64) + 0.5)
            b.copy_(torch.randn(1, generator=generator, dtype=torch.float64))
    return layer


def reference(logits, boundaries, alphas, betas, apply_to):
    out = logits.clone()
    tasks = range(len(boundaries) - 1) if apply_to == "all" else [len(boundaries) - 2]
    for t in tasks:
        lo, hi = boundaries[t], boundaries[t + 1]
        for c in range(lo, hi):
            out[:, c] = alphas[t] * logits[:, c] + betas[t]
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("boundaries", BOUNDARIES)
@pytest.mark.parametrize("apply_to", ["newest", "all"])
def test_matches_reference_values_and_gradients(seed, boundaries, apply_to):
    layer = random_layer(len(boundaries) - 1, apply_to, seed)
    torch.manual_seed(seed)
    logits = torch.randn(5, boundaries[-1], dtype=torch.float64, requires_grad=True)
    logits_ref = logits.detach().clone().requires_grad_(True)
    alphas = [a.detach().clone().requires_grad_(True) for a in layer.alpha]
    betas = [b.detach().clone().requires_grad_(True) for b in layer.beta]
    out = layer(logits, boundaries)
    ref = reference(logits_ref, boundaries, alphas, betas, apply_to)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn_like(ref)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(logits.grad, logits_ref.grad)
    for ours, theirs in zip(list(layer.alpha) + list(layer.beta), alphas + betas):
        expected = theirs.grad if theirs.grad is not None else torch.zeros_like(theirs)
        torch.testing.assert_close(ours.grad if ours.grad is not None else torch.zeros_like(ours), expected)


@pytest.mark.parametrize("apply_to", ["newest", "all"])
def test_gradcheck(apply_to):
    layer = random_layer(3, apply_to, 0)
    logits = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def fn(z, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (z, [0, 2, 3, 7]))

    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(fn, (logits, *params))


def test_new_task_is_identity_and_old_pairs_kept():
    layer = random_layer(2, "all", 3)
    old = [p.detach().clone() for p in layer.parameters()]
    layer.add_task()
    logits = torch.randn(4, 9, dtype=torch.float64)
    out = layer(logits, [0, 3, 5, 9])
    assert torch.equal(out[:, 5:], logits[:, 5:])
    assert all(torch.equal(a, b) for a, b in zip(list(layer.alpha)[:2] + list(layer.beta)[:2], old[:2] + old[2:]))
    newest = BiasCorrection()
    newest.add_tasks_to(3)
    z = torch.randn(2, 6)
    assert torch.equal(newest(z, [0, 2, 4, 6]), z)


def test_newest_parameters_and_errors():
    layer = BiasCorrection()
    assert torch.equal(layer(torch.ones(2, 0), [0]), torch.ones(2, 0))
    layer.add_task()
    layer.add_task()
    alpha, beta = layer.newest_parameters()
    assert alpha is layer.alpha[1] and beta is layer.beta[1]
    with pytest.raises(HeadStateError, match="describe 3 tasks but the bias correction has 2"):
        layer(torch.randn(2, 6), [0, 2, 4, 6])
    with pytest.raises(ModelConfigError, match=r"logits must have shape \[B, 6\], got \[2, 5\]"):
        layer(torch.randn(2, 5), [0, 3, 6])
    with pytest.raises(ModelConfigError, match="apply_to must be one of 'newest', 'all'; got 'old'"):
        BiasCorrection("old")
    with pytest.raises(HeadStateError, match="task must be in"):
        layer.task_parameters(2)


def test_only_newest_slice_changes_in_newest_mode():
    layer = random_layer(3, "newest", 1)
    logits = torch.randn(4, 8, dtype=torch.float64)
    out = layer(logits, [0, 2, 3, 8])
    assert torch.equal(out[:, :3], logits[:, :3])
    assert not torch.equal(out[:, 3:], logits[:, 3:])


def test_beta_penalty_is_the_official_0_05_beta_squared():
    layer = BiasCorrection()
    with pytest.raises(HeadStateError, match="no task yet"):
        layer.beta_penalty()
    layer.add_tasks_to(2)
    with torch.no_grad():
        layer.beta[0].fill_(3.0)
        layer.beta[1].fill_(-2.0)
        layer.alpha[1].fill_(5.0)
    penalty = layer.beta_penalty()
    assert penalty.item() == pytest.approx(0.05 * 4.0)
    penalty.backward()
    assert layer.beta[1].grad.item() == pytest.approx(0.1 * -2.0)
    assert layer.alpha[1].grad is None and layer.beta[0].grad is None  # α unregularised, old pairs untouched
    assert layer.beta_penalty(0.5).item() == pytest.approx(2.0)


def test_bic_phases_inside_a_network_follow_methods_section_9():
    """Stage 1 of phase t: student uncorrected; teacher's newest group corrected by phase t-1's pair only."""
    from cil_models import IncrementalNet

    torch.manual_seed(0)
    net = IncrementalNet("resnet8", in_channels=1, bias_correction="newest")
    net.expand(4)  # phase 0
    net.expand(3)  # phase 1
    with torch.no_grad():  # phase 1, stage 2 fitted (α1, β1)
        net.bias_correction.alpha[1].fill_(0.5)
        net.bias_correction.beta[1].fill_(-1.0)
    teacher = net.frozen_copy()
    net.expand(2)  # phase 2: a new identity pair
    x = torch.randn(3, 1, 16, 16)
    net.eval()
    with torch.no_grad():
        raw = net.head(net.features(x))
        assert torch.equal(net(x), raw)  # the student's logits are not corrected in stage 1
        old = teacher(x)
        expected = torch.cat([raw[:, :4], 0.5 * raw[:, 4:7] - 1.0], dim=1)  # only the teacher's newest group
        torch.testing.assert_close(old, expected)
    alpha, beta = net.bias_correction.newest_parameters()
    assert alpha is net.bias_correction.alpha[2] and float(alpha.detach()) == 1.0 and float(beta.detach()) == 0.0
    assert not any(p is alpha or p is beta for p in net.parameters_without_bias_correction())
