"""Properties shared by every loss: dtype/device preservation (bfloat16 under autocast → float32 loss),
batch of one, saturated logits (±1e4) — all finite, with finite gradients."""

from __future__ import annotations

import pytest
import torch

import cil_losses as L
from cil_losses import balanced

C, C_OLD, B = 10, 6, 8
BOUNDS = [0, 3, 6]

LOSSES = {
    "kd": lambda z, y, t, m: L.kd_loss(z[:, :C_OLD], t, 2.0, t_squared=True),
    "logit_adjusted": lambda z, y, t, m: L.logit_adjusted_cross_entropy(z, y, torch.linspace(-1, 1, C)),
    "balanced": lambda z, y, t, m: L.balanced_softmax_cross_entropy(z, y, list(range(1, C + 1)), C_OLD, 0.5),
    "relaxed": lambda z, y, t, m: L.balanced_softmax_cross_entropy(z, y, list(range(1, C + 1)), C_OLD, eps=1.0),
    "separated": lambda z, y, t, m: L.separated_softmax_cross_entropy(z, y, C_OLD, m),
    "task_wise_kd": lambda z, y, t, m: L.task_wise_kd(z, t, BOUNDS),
    "segmented_log_softmax": lambda z, y, t, m: L.segmented_log_softmax(z, [0, 3, 6, C]).exp().sum(),
    "input_coordination": lambda z, y, t, m: L.input_coordination_ce(z, y, detach_weight=False, normalize=True),
    "output_coordination": lambda z, y, t, m: L.output_coordination_kd(z, t, BOUNDS),
    "suppression": lambda z, y, t, m: L.new_head_suppression(z, m, C_OLD, squared=True),
    "jioc": lambda z, y, t, m: L.jioc_loss(z, y, t, BOUNDS, m),
    "dakd": lambda z, y, t, m: L.dakd_loss(z[:, :C_OLD], t, [5, 0, 3, 9, 1, 2]),
}


def _fused(loss):
    """``loss`` with the fused CPU cross-entropy forced (it is chosen only for large inputs otherwise)."""
    def run(z, y, t, m):
        saved, balanced.FUSED_MIN_NUMEL = balanced.FUSED_MIN_NUMEL, 0
        try:
            return loss(z, y, t, m)
        finally:
            balanced.FUSED_MIN_NUMEL = saved
    return run


LOSSES["logit_adjusted_fused"] = _fused(LOSSES["logit_adjusted"])
LOSSES["balanced_fused"] = _fused(LOSSES["balanced"])


def _inputs(dtype, batch=B):
    g = torch.Generator().manual_seed(7)
    m = torch.arange(batch) % 3 == 0
    y = torch.where(m, torch.randint(0, C_OLD, (batch,), generator=g), torch.randint(C_OLD, C, (batch,), generator=g))
    teacher = torch.randn(batch, C_OLD, generator=g).to(dtype)
    features = torch.randn(batch, 16, generator=g).to(dtype)
    return features, y, teacher, m


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved(name, dtype):
    features, y, teacher, m = _inputs(dtype)
    z = (features @ torch.randn(16, C, dtype=dtype, generator=torch.Generator().manual_seed(1))).requires_grad_()
    loss = LOSSES[name](z, y, teacher, m)
    loss.backward()
    assert loss.dtype == dtype and loss.device == z.device and loss.dim() == 0
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_bfloat16_under_cpu_autocast_gives_float32_loss(name):
    features, y, teacher, m = _inputs(torch.float32)
    layer = torch.nn.Linear(16, C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(features)
        assert z.dtype == torch.bfloat16
        loss = LOSSES[name](z, y, teacher.bfloat16(), m)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
    # same value as the float32 computation on the same (rounded) logits
    reference = LOSSES[name](z.detach().float(), y, teacher.bfloat16().float(), m)
    torch.testing.assert_close(loss.detach(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", LOSSES)
def test_cuda_device_is_preserved(name):
    features, y, teacher, m = (t.cuda() for t in _inputs(torch.float32))
    z = torch.nn.Linear(16, C).cuda()(features)
    loss = LOSSES[name](z, y, teacher, m)
    loss.backward()
    assert loss.device.type == "cuda"


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("memory_first", [True, False], ids=["memory-sample", "new-sample"])
def test_batch_of_one(name, memory_first):
    features, y, teacher, m = _inputs(torch.float64, batch=3)
    pick = slice(0, 1) if memory_first else slice(1, 2)   # sample 0 is a memory sample, sample 1 a new one
    z = (features[pick] @ torch.randn(16, C, dtype=torch.float64)).requires_grad_()
    loss = LOSSES[name](z, y[pick], teacher[pick], m[pick])
    (grad,) = torch.autograd.grad(loss, z)
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logits_stay_finite(name, dtype):
    features, y, teacher, m = _inputs(dtype)
    g = torch.Generator().manual_seed(11)
    z = ((torch.rand(B, C, generator=g) > 0.5).to(dtype) * 2 - 1).mul(1e4).requires_grad_()
    teacher = ((torch.rand(B, C_OLD, generator=g) > 0.5).to(dtype) * 2 - 1) * 1e4
    loss = LOSSES[name](z, y, teacher, m)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
