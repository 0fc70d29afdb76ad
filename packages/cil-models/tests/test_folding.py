"""fold_batch_norms: the folded copy computes the stored network's function (float64), touches nothing of it,
folds only the pairs it knows, keeps the memory format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cil_models import IncrementalNet, fold_batch_norms


def _randomise_batch_norms(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _batch_norms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


NETS = [
    ("resnet8", {}, 3, 32),
    ("resnet20", {"shortcut": "B"}, 1, 28),  # projection shortcut: conv + batch norm in a Sequential
    ("resnet8", {"block_relu": False}, 3, 32),  # PODNet's network
    ("resnet18-cifar", {"last_relu": False}, 3, 16),  # torchvision's blocks
    ("resnet18", {}, 3, 64),  # ImageNet stem (7×7 convolution, max pool) and downsample Sequentials
]


@pytest.mark.parametrize("backbone,options,channels,size", NETS)
def test_folded_copy_computes_the_same_function_and_has_no_batch_norm_left(backbone, options, channels, size):
    torch.manual_seed(0)
    net = IncrementalNet(backbone, in_channels=channels, backbone_options=options)
    net.expand(7)
    net.add_extractor()  # two extractors (DER / FOSTER teachers): both are folded
    net.expand(3)
    _randomise_batch_norms(net)
    net = net.double().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batch_norms(net)
    assert _batch_norms(net) > 0 and _batch_norms(folded) == 0
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    x = torch.randn(3, channels, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(folded.features(x), net.features(x), rtol=1e-10, atol=1e-10)
        maps_f, pooled_f = folded.extractors[0].stage_features(x)
        maps, pooled = net.extractors[0].stage_features(x)
        for a, b in zip(maps_f, maps):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(pooled_f, pooled, rtol=1e-10, atol=1e-10)
    for k, v in net.state_dict().items():  # the stored network is untouched
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in net.parameters())


def test_float32_channels_last_stays_channels_last_and_close():
    torch.manual_seed(1)
    net = IncrementalNet("resnet20", in_channels=3)
    net.expand(10)
    _randomise_batch_norms(net)
    net = net.eval().to_channels_last()
    folded = fold_batch_norms(net)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(c.bias is not None for c in convs)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


class _UnknownBlock(nn.Module):
    """conv / bn attributes, but the forward puts a ReLU between them: must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(torch.relu(self.conv1(x)))


class _ReversedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # its own order: not a plain sequence
        return self[0](self[1](x))


def test_only_known_pairs_are_folded():
    torch.manual_seed(2)
    plain = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    no_stats = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    reversed_seq = _ReversedSequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    net = nn.Sequential(plain, _UnknownBlock(), no_stats, reversed_seq).double()
    net[1].conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    net[1].bn1 = nn.BatchNorm2d(4).double()
    _randomise_batch_norms(net)
    net.eval()
    folded = fold_batch_norms(net)
    # folded: the first conv + batch norm of the plain Sequential only
    assert isinstance(folded[0][1], nn.Identity) and isinstance(folded[0][3], nn.BatchNorm2d)
    assert isinstance(folded[1].bn1, nn.BatchNorm2d)
    assert isinstance(folded[2][1], nn.BatchNorm2d)
    assert isinstance(folded[3][1], nn.BatchNorm2d)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-10, atol=1e-10)
