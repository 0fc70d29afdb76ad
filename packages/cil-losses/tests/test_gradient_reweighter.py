"""GradientReweighter (GR / DGR): the vectorised reweighted FC layer against the per-row reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import cil_losses as L
from cil_losses.errors import LossArgumentError, PhaseStateError

T = 2.0
BLOCKS = [4, 3, 2]          # three per-task parameter blocks: 4 base classes, then 3, then 2
D = 5
ATOL = RTOL = 1e-6


def _blocks(gen, sizes, dtype=torch.float64):
    weights = [(torch.randn(n, D, generator=gen, dtype=torch.float64) * 0.5).to(dtype).requires_grad_() for n in sizes]
    biases = [(torch.randn(n, generator=gen, dtype=torch.float64) * 0.1).to(dtype).requires_grad_() for n in sizes]
    return weights, biases


def _loss_fn(num_old, y, teacher, offsets, lost, kd_weight, dakd=True, use_kd=True):
    """Returns f(z_ce, z_kd) -> (L_CE, λ_KD·T²·L_KD or None) as DGR's training step builds them."""

    def fn(z_ce, z_kd):
        ce = F.cross_entropy(z_ce.double() + offsets, y)
        if num_old == 0 or not use_kd:
            return ce, None
        student = z_kd.double()[:, :num_old]   # the layer's z_kd has num_old columns; the reference passes all
        kd = L.dakd_loss(student, teacher, lost, T) if dakd else L.kd_loss(student, teacher, T)
        return ce, kd_weight * T * T * kd

    return fn


def _scenario(gen, num_old, num_classes, batch=6):
    h = torch.randn(batch, D, generator=gen, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    teacher = torch.randn(batch, num_old, generator=gen, dtype=torch.float64) * 2
    counts = torch.randint(1, 50, (num_classes,), generator=gen).double()
    offsets = (counts / counts.sum()).log()
    lost = torch.randint(0, 40, (num_old,), generator=gen).double()
    return h, y, teacher, offsets, lost


CONFIGS = {
    "dgr": dict(),
    "gr": dict(decoupled=False),
    "no-task-balance": dict(task_balance=False),
    "no-loss-balance": dict(loss_balance=False),
    "no-class-balance": dict(class_balance=False),
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("phase", ["base", "incremental"])
@pytest.mark.parametrize("dakd", [True, False], ids=["dakd", "kd"])
@pytest.mark.parametrize("host_ratios", [True, False], ids=["host-ratios", "tensor-ratios"])
def test_matches_per_row_reference_over_several_steps(config, phase, dakd, host_ratios, gen, ref):
    sizes = BLOCKS[:1] if phase == "base" else BLOCKS
    num_classes = sum(sizes)
    num_old = 0 if phase == "base" else sizes[0] + sizes[1]
    n_seen, n_new = 900.0, 150.0
    options = CONFIGS[config]
    rw = L.GradientReweighter(phi_dtype=torch.float64, host_ratios=host_ratios, **options)
    rw.start_phase(num_classes, num_old, n_seen, n_new)
    gamma = L.dgr_attenuation_gamma(n_seen, n_new) if num_old else 1.0
    kd_weight = L.dgr_kd_weight(n_seen, n_new) if num_old else 0.0
    w_fused, b_fused = _blocks(gen, sizes)
    w_ref = [w.detach().clone().requires_grad_() for w in w_fused]
    b_ref = [b.detach().clone().requires_grad_() for b in b_fused]
    phi_ref = [0.0] * num_classes
    for _ in range(3):  # Φ accumulates across steps
        h, y, teacher, offsets, lost = _scenario(gen, num_old, num_classes)
        fn = _loss_fn(num_old, y, teacher, offsets, lost, kd_weight, dakd)
        # fused: one forward through the layer, one backward
        for p in (*w_fused, *b_fused):
            p.grad = None
        h_fused = h.detach().clone().requires_grad_()
        z_ce, z_kd = rw(h_fused, torch.cat(w_fused), torch.cat(b_fused))
        ce, kd = fn(z_ce, z_kd)
        (ce if kd is None else ce + kd).backward()
        # reference: backward, then overwrite every row's .grad
        for p in (*w_ref, *b_ref):
            p.grad = None
        h_ref = h.detach().clone().requires_grad_()
        weights, beta = ref.reference_dgr_step(
            h_ref, w_ref, b_ref, lambda z: fn(z, z), phi=phi_ref, num_old=num_old, gamma=gamma,
            decoupled=options.get("decoupled", True), class_balance=options.get("class_balance", True),
            task_balance=options.get("task_balance", True), loss_balance=options.get("loss_balance", True),
        )
        close = dict(atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(rw.phi, torch.tensor(phi_ref, dtype=torch.float64), **close)
        torch.testing.assert_close(rw.last_weights, torch.tensor(weights, dtype=torch.float64), **close)
        if num_old:
            torch.testing.assert_close(rw.last_beta, torch.tensor(beta, dtype=torch.float64), **close)
        else:
            assert rw.last_beta is None
        torch.testing.assert_close(h_fused.grad, h_ref.grad, **close)      # backbone: ordinary gradient
        for a, b in zip((*w_fused, *b_fused), (*w_ref, *b_ref)):
            torch.testing.assert_close(a.grad, b.grad, **close)
        with torch.no_grad():  # an SGD step so that the next step sees other parameters
            for a, b in zip((*w_fused, *b_fused), (*w_ref, *b_ref)):
                a -= 0.5 * a.grad
                b -= 0.5 * b.grad


def test_reweighting_actually_changes_the_fc_gradient(gen):
    """Guard against a silently disabled reweighting: the FC gradient differs from the plain one."""
    rw = L.GradientReweighter()
    rw.start_phase(9, 7, 900, 150)
    w, b = _blocks(gen, BLOCKS)
    h, y, teacher, offsets, lost = _scenario(gen, 7, 9)
    fn = _loss_fn(7, y, teacher, offsets, lost, 1.0)
    z_ce, z_kd = rw(h, torch.cat(w), torch.cat(b))
    ce, kd = fn(z_ce, z_kd)
    fused = torch.autograd.grad(ce + kd, w)
    z = F.linear(h, torch.cat(w), torch.cat(b))
    ce, kd = fn(z, z)
    plain = torch.autograd.grad(ce + kd, w)
    assert not torch.allclose(torch.cat(fused), torch.cat(plain))


def test_kd_stream_never_reaches_new_rows(gen):
    rw = L.GradientReweighter(class_balance=False, task_balance=False, loss_balance=False)
    rw.start_phase(5, 3, 100, 50)
    w = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, D, dtype=torch.float64)
    z_ce, z_kd = rw(h, w, None)
    assert z_kd.shape == (4, 3) and torch.equal(z_kd, z_ce[:, :3])   # the old columns only
    z_kd.sum().backward()
    assert torch.all(w.grad[3:] == 0) and torch.any(w.grad[:3] != 0)


def test_outputs_are_separate_tensors(gen):
    """z_kd is a copy of the old columns: in-place changes of one stream leave the other alone."""
    rw = L.GradientReweighter()
    rw.start_phase(5, 3, 100, 50)
    w = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    z_ce, z_kd = rw(torch.randn(4, D, dtype=torch.float64), w, None)
    before = z_kd.detach().clone()
    z_ce.mul_(2.0)
    assert torch.equal(z_kd.detach(), before)
    rw.start_phase(5, 0, 0, 50)
    z_ce, z_kd = rw(torch.randn(4, D, dtype=torch.float64), w, None)
    assert z_kd.shape == (4, 0)
    F.cross_entropy(z_ce, torch.tensor([0, 1, 2, 4])).backward()   # phase 0: no KD stream
    assert torch.isfinite(w.grad).all()


@pytest.mark.parametrize("phase", ["base", "incremental"])
def test_gradcheck_with_reweighting_switched_off(phase):
    """With every ratio off the Function's backward is the true derivative."""
    num_classes, num_old = (4, 0) if phase == "base" else (6, 4)
    rw = L.GradientReweighter(class_balance=False, task_balance=False, loss_balance=False)
    rw.start_phase(num_classes, num_old, 100, 20)
    h = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(num_classes, D, dtype=torch.float64, requires_grad=True)
    b = torch.randn(num_classes, dtype=torch.float64, requires_grad=True)

    def layer(h, w, b):
        z_ce, z_kd = rw(h, w, b)
        return (z_ce, z_kd[:, :num_old]) if num_old else z_ce

    assert torch.autograd.gradcheck(layer, (h, w, b))


def test_autocast_bfloat16_on_cpu(gen, ref):
    """Under CPU autocast the layer computes like F.linear (bf16 logits); grads keep the parameters' dtypes."""
    sizes, num_old, n_seen, n_new = BLOCKS, 7, 900.0, 150.0
    rw = L.GradientReweighter()
    rw.start_phase(9, num_old, n_seen, n_new)
    w, b = _blocks(gen, sizes, torch.float32)
    w_ref = [x.detach().clone().requires_grad_() for x in w]
    b_ref = [x.detach().clone().requires_grad_() for x in b]
    h, y, teacher, offsets, lost = _scenario(gen, num_old, 9)
    h = h.float()
    fn = _loss_fn(num_old, y, teacher, offsets, lost, L.dgr_kd_weight(n_seen, n_new))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_ce, z_kd = rw(h, torch.cat(w), torch.cat(b))
        assert z_ce.dtype == torch.bfloat16 == F.linear(h, torch.cat(w), torch.cat(b)).dtype
        ce, kd = fn(z_ce, z_kd)
    (ce + kd).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref.reference_dgr_step(h, w_ref, b_ref, lambda z: fn(z, z), phi=[0.0] * 9, num_old=num_old,
                               gamma=L.dgr_attenuation_gamma(n_seen, n_new))
    for a, r in zip((*w, *b), (*w_ref, *b_ref)):
        assert a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, r.grad, atol=2e-2, rtol=5e-2)
    assert torch.isfinite(rw.phi).all() and rw.last_weights.dtype == torch.float32


def test_no_grad_forward_and_phase_context():
    rw = L.GradientReweighter()
    with pytest.raises(PhaseStateError, match="start_phase"):
        rw(torch.randn(2, D), torch.randn(3, D), None)
    rw.start_phase(3, 0, 0, 60)
    with pytest.raises(LossArgumentError, match="weight must have shape"):
        rw(torch.randn(2, D), torch.randn(4, D), None)
    with pytest.raises(LossArgumentError, match="bias"):
        rw(torch.randn(2, D), torch.randn(3, D), torch.zeros(4))
    with pytest.raises(LossArgumentError, match="num_old"):
        rw.start_phase(3, 3, 10, 10)
    with torch.no_grad():
        z_ce, z_kd = rw(torch.randn(2, D), torch.randn(3, D, requires_grad=True), None)
    assert z_kd.shape == (2, 0) and torch.equal(z_ce[:, :0], z_kd) and torch.all(rw.phi == 0)


def test_log_prior_offsets_and_state_dict(gen):
    rw = L.GradientReweighter()
    rw.start_phase(5, 3, 300, 100)
    torch.testing.assert_close(rw.log_prior_offsets(), torch.full((5,), -math.log(5.0), dtype=torch.float64))
    w = torch.randn(5, D, requires_grad=True)
    z_ce, _ = rw(torch.randn(4, D), w, None)
    F.cross_entropy(z_ce, torch.tensor([0, 1, 3, 4])).backward()
    expected = (rw.phi / rw.phi.sum()).log()
    torch.testing.assert_close(rw.log_prior_offsets(), expected)
    torch.testing.assert_close(rw.class_weights(), L.dgr_class_weights(rw.phi, 3, rw.gamma))
    restored = L.GradientReweighter()
    restored.start_phase(2, 0, 0, 10)           # another phase's size: loading resizes Φ
    restored.load_state_dict(rw.state_dict())
    assert torch.equal(restored.phi, rw.phi)
    assert (restored.num_classes, restored.num_old, restored.gamma) == (5, 3, rw.gamma)
    rw.start_phase(7, 5, 500, 100)
    assert rw.phi.shape == (7,) and torch.all(rw.phi == 0)


@pytest.mark.parametrize("with_kd", [True, False])
@pytest.mark.parametrize("host_ratios", [True, False], ids=["host-ratios", "tensor-ratios"])
def test_reweight_row_gradients_matches_the_reference_rewrite(with_kd, host_ratios, gen, ref):
    sizes, num_old = BLOCKS, 7
    rw = L.GradientReweighter(host_ratios=host_ratios)
    rw.start_phase(9, num_old, 300, 100)
    phi = [0.0] * 9
    blocks_w = [torch.zeros(n, D, dtype=torch.float64, requires_grad=True) for n in sizes]
    blocks_b = [torch.zeros(n, dtype=torch.float64, requires_grad=True) for n in sizes]
    for _ in range(2):
        ce_w = [torch.randn(n, D, generator=gen, dtype=torch.float64) for n in sizes]
        ce_b = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]
        kd_w = [torch.randn(n, D, generator=gen, dtype=torch.float64) for n in sizes[:2]] + [torch.zeros(2, D)]
        kd_b = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes[:2]] + [torch.zeros(2)]
        for p in (*blocks_w, *blocks_b):
            p.grad = torch.zeros_like(p)
        ref.reference_dgr_rewrite(blocks_w, blocks_b, ce_w, ce_b, kd_w if with_kd else None,
                                  kd_b if with_kd else None, phi=phi, num_old=num_old, gamma=rw.gamma)
        grad_w, grad_b = rw.reweight_row_gradients(
            torch.cat(ce_w), torch.cat(ce_b),
            torch.cat(kd_w)[:num_old].double() if with_kd else None, torch.cat(kd_b)[:num_old].double() if with_kd else None,
        )
        torch.testing.assert_close(grad_w, torch.cat([p.grad for p in blocks_w]), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(grad_b, torch.cat([p.grad for p in blocks_b]), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(rw.phi, torch.tensor(phi, dtype=torch.float64), atol=ATOL, rtol=RTOL)


def test_batch_of_one_and_saturated_logits_match_the_reference(gen, ref):
    rw = L.GradientReweighter()
    rw.start_phase(9, 7, 900, 150)
    w, b = _blocks(gen, BLOCKS)
    w_ref = [x.detach().clone().requires_grad_() for x in w]
    b_ref = [x.detach().clone().requires_grad_() for x in b]
    h, y, teacher, offsets, lost = _scenario(gen, 7, 9, batch=1)
    h = (h * 1e3).detach().requires_grad_()   # logits in the thousands
    fn = _loss_fn(7, y, teacher * 1e3, offsets, lost, 1.3)
    z_ce, z_kd = rw(h, torch.cat(w), torch.cat(b))
    ce, kd = fn(z_ce, z_kd)
    (ce + kd).backward()
    h_ref = h.detach().clone().requires_grad_()
    ref.reference_dgr_step(h_ref, w_ref, b_ref, lambda z: fn(z, z), phi=[0.0] * 9, num_old=7, gamma=rw.gamma)
    for a, r in zip((h, *w, *b), (h_ref, *w_ref, *b_ref)):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, r.grad, atol=ATOL, rtol=RTOL)


def test_reweight_row_gradients_leaves_its_inputs_alone(gen):
    rw = L.GradientReweighter()
    rw.start_phase(9, 7, 300, 100)
    ce_rows, ce_bias = torch.randn(9, D, generator=gen), torch.randn(9, generator=gen)
    kd_rows, kd_bias = torch.randn(7, D, generator=gen), torch.randn(7, generator=gen)
    copies = [t.clone() for t in (ce_rows, ce_bias, kd_rows, kd_bias)]
    grad_w, grad_b = rw.reweight_row_gradients(ce_rows, ce_bias, kd_rows, kd_bias)
    for t, c in zip((ce_rows, ce_bias, kd_rows, kd_bias), copies):
        assert torch.equal(t, c)
    assert not torch.equal(grad_w, ce_rows)


def test_old_class_mask_follows_phases_and_checkpoints(gen):
    """The per-phase old/new mask is rebuilt for a new phase and after loading another phase's state."""
    rw = L.GradientReweighter()
    for num_classes, num_old in [(5, 3), (8, 5), (8, 2)]:
        rw.start_phase(num_classes, num_old, 300, 100)
        for _ in range(2):
            w = torch.randn(num_classes, D, dtype=torch.float64, requires_grad=True)
            z_ce, _ = rw(torch.randn(4, D, dtype=torch.float64), w, None)
            F.cross_entropy(z_ce, torch.randint(0, num_classes, (4,), generator=gen)).backward()
            # the step's weights are those of the public function on the updated Φ (mask built there)
            torch.testing.assert_close(rw.last_weights, L.dgr_class_weights(rw.phi, num_old, rw.gamma))
    restored = L.GradientReweighter()
    restored.start_phase(8, 5, 300, 100)
    w = torch.randn(8, D, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(restored(torch.randn(4, D, dtype=torch.float64), w, None)[0], torch.tensor([0, 1, 6, 7])).backward()
    restored.load_state_dict(rw.state_dict())          # phase with num_old = 2
    phi_before = restored.phi.clone()
    F.cross_entropy(restored(torch.randn(4, D, dtype=torch.float64), w, None)[0], torch.tensor([0, 1, 6, 7])).backward()
    assert not torch.equal(restored.phi, phi_before)
    torch.testing.assert_close(restored.last_weights, L.dgr_class_weights(restored.phi, 2, restored.gamma))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("num_classes, num_old", [(9, 0), (9, 7), (2, 1), (9, 8)])
@pytest.mark.parametrize("zeros", ["none", "old", "new", "all", "nan"])
@pytest.mark.parametrize("phi_dtype", [torch.float64, torch.float32])
def test_host_ratios_equal_the_tensor_formulas(config, num_classes, num_old, zeros, phi_dtype, gen):
    """The CPU shortcut (group statistics read as floats) and the guarded tensor formulas give the same
    gradients, weights and β, also when some Φ_c = 0 (the shortcut hands over to the guarded formula),
    with one class per group, and with a NaN row gradient (both propagate it the same way)."""
    layers = [L.GradientReweighter(phi_dtype=phi_dtype, host_ratios=h, **CONFIGS[config]) for h in (True, False)]
    for layer in layers:
        layer.start_phase(num_classes, num_old, 600.0, 200.0)
    for step in range(2):
        ce_rows = torch.randn(num_classes, D, generator=gen)
        ce_bias = torch.randn(num_classes, generator=gen)
        if step == 0 and zeros in ("old", "all") and num_old:
            ce_rows[0] = 0.0                                  # Φ_0 stays 0 after the first step
        if step == 0 and zeros in ("new", "all"):
            ce_rows[-1] = 0.0
        if zeros == "nan":
            ce_rows[0, 0] = float("nan")
        kd = (torch.randn(num_old, D, generator=gen), torch.randn(num_old, generator=gen)) if num_old else (None, None)
        outputs = [layer.reweight_row_gradients(ce_rows, ce_bias, *kd) for layer in layers]
        (w_host, b_host), (w_tensor, b_tensor) = outputs
        torch.testing.assert_close(w_host, w_tensor, atol=1e-6, rtol=1e-6, equal_nan=True)
        torch.testing.assert_close(b_host, b_tensor, atol=1e-6, rtol=1e-6, equal_nan=True)
        host, tensor = layers
        torch.testing.assert_close(host.phi, tensor.phi, equal_nan=True)
        torch.testing.assert_close(host.last_weights, tensor.last_weights, atol=1e-6, rtol=1e-6, equal_nan=True)
        if num_old:
            assert host.last_beta.dtype == tensor.last_beta.dtype and host.last_beta.dim() == 0
            torch.testing.assert_close(host.last_beta, tensor.last_beta, atol=1e-6, rtol=1e-6, equal_nan=True)
        else:
            assert host.last_beta is None and tensor.last_beta is None
