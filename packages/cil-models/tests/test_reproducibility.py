"""Networks built with the same arguments and seed draw the same numbers as cil-models 0.1.0 did.

The checksums below were computed with the code *before* multi-extractor networks, stage
outputs, the local-similarity head and the ReLU option were added (commit c86cd7d): a change
that alters the initialisation, the order or the number of random draws, or the default
forward path, fails here. The sums are float64; the tolerance is far below what any changed
draw produces (one changed weight moves them by ~1e-2) but allows other BLAS kernels.
"""

from __future__ import annotations

import pytest
import torch

from cil_models import IncrementalNet

# (kwargs, sum of parameters, sum of |parameters|, sum of eval logits of a seeded batch,
#  the next torch.rand(1) after building)
REFERENCE = [
    ({}, 238.0448645480169, 4272.598390108145, -4.046110779047012, 0.531056821346283),
    ({"head": "cosine"}, 240.18646618478988, 4256.710569557206, -0.12584028393030167, 0.2034962773323059),
    (
        {"in_channels": 1, "head_options": {"init": "torch"}, "bias_correction": "newest"},
        242.4124874853037,
        4231.300138945215,
        -0.6163248904049397,
        0.8550768494606018,
    ),
]


@pytest.mark.parametrize(("kw", "total", "absolute", "logits", "next_draw"), REFERENCE)
def test_resnet8_expanded_twice_matches_the_recorded_checksums(kw, total, absolute, logits, next_draw):
    torch.manual_seed(0)
    net = IncrementalNet("resnet8", **kw)
    net.expand(3)
    net.expand(2)
    params = list(net.parameters())
    assert sum(p.double().sum() for p in params).item() == pytest.approx(total, rel=1e-12, abs=1e-12)
    assert sum(p.double().abs().sum() for p in params).item() == pytest.approx(absolute, rel=1e-12)
    assert torch.rand(1).item() == next_draw  # same number of draws from the global generator
    x = torch.randn(2, kw.get("in_channels", 3), 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net.eval()(x).double().sum().item()
    assert out == pytest.approx(logits, rel=1e-6, abs=1e-6)


def test_resnet18_cifar_matches_the_recorded_checksum():
    torch.manual_seed(0)
    net = IncrementalNet("resnet18-cifar")
    net.expand(5)
    total = sum(p.double().sum() for p in net.parameters()).item()
    assert total == pytest.approx(4756.170707422858, rel=1e-12)
    assert torch.rand(1).item() == 0.8089722990989685
