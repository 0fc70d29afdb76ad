"""Backbones: architecture (parameter counts, shapes, shortcuts), registry, input formats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import cil_models
from cil_models import BACKBONES, ModelConfigError, build_backbone
from cil_models.cifar_resnet import BasicBlock, ProjectionShortcut, ZeroPadShortcut

# Exact counts without a classifier. By hand for ResNet-32, option A, 3 input channels:
# stem 3·16·9 + 2·16 = 464; stage 1: 5·(2·16·16·9 + 2·2·16) = 23,360;
# stage 2: (16·32·9 + 32·32·9 + 4·32) + 4·(2·32·32·9 + 4·32) = 88,192;
# stage 3: (32·64·9 + 64·64·9 + 4·64) + 4·(2·64·64·9 + 4·64) = 351,488; total 463,504.
EXACT = {
    ("resnet8", 3): 74_640,
    ("resnet20", 3): 269_072,
    ("resnet32", 3): 463_504,
    ("resnet32", 1): 463_504 - 2 * 16 * 9,
    ("resnet8", 1): 74_640 - 2 * 16 * 9,
    ("resnet20", 1): 269_072 - 2 * 16 * 9,
    ("resnet44", 1): 657_936 - 2 * 16 * 9,
    ("resnet56", 1): 852_368 - 2 * 16 * 9,
    ("resnet110", 1): 1_727_312 - 2 * 16 * 9,
    ("resnet44", 3): 657_936,
    ("resnet56", 3): 852_368,
    ("resnet110", 3): 1_727_312,
    # torchvision ResNet-18 has 11,689,512 parameters, 513,000 of them in its 1000-way fc.
    ("resnet18", 3): 11_689_512 - 513_000,
    ("resnet18", 1): 11_689_512 - 513_000 - 2 * 64 * 49,
    # 3×3 stem instead of 7×7: 64·3·(49 − 9) fewer.
    ("resnet18-cifar", 3): 11_689_512 - 513_000 - 64 * 3 * 40,
    ("resnet18-cifar", 1): 11_689_512 - 513_000 - 64 * 3 * 49 + 64 * 9,
}
# The rounded values published by He et al. 2016 (Table 6) and torchvision's model card.
PUBLISHED_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7}


@pytest.mark.parametrize(("name", "channels"), sorted(EXACT))
def test_parameter_counts_exact(name, channels, count_params):
    assert count_params(build_backbone(name, channels)) == EXACT[(name, channels)]


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_cifar_parameter_counts_match_he_et_al(name, count_params):
    millions = count_params(build_backbone(name)) / 1e6
    assert round(millions, 2 if millions < 1 else 1) == PUBLISHED_MILLIONS[name]


def test_resnet18_counts_round_to_11_2_million(count_params):
    for name in ("resnet18", "resnet18-cifar"):
        assert round(count_params(build_backbone(name)) / 1e6, 1) == 11.2


def test_option_b_adds_two_projections(count_params):
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count_params(build_backbone("resnet32", shortcut="B")) == EXACT[("resnet32", 3)] + extra
    net = build_backbone("resnet32", shortcut="B")
    assert sum(isinstance(m, ProjectionShortcut) for m in net.modules()) == 2
    net_a = build_backbone("resnet32")
    assert sum(isinstance(m, ZeroPadShortcut) for m in net_a.modules()) == 2
    assert sum(isinstance(m, BasicBlock) for m in net_a.modules()) == 15


# Every backbone with 1 and 3 channels at 28×28 and 32×32; the deep CIFAR ResNets differ from
# ResNet-32 only in depth, so one input format is enough for them.
SHAPE_CASES = [
    (name, channels, size)
    for name in BACKBONES
    for channels in (1, 3)
    for size in (28, 32)
    if name not in ("resnet44", "resnet56", "resnet110") or (channels, size) == (3, 32)
]


@pytest.mark.parametrize(("name", "channels", "size"), SHAPE_CASES)
def test_features_shape_and_dim(name, channels, size):
    torch.manual_seed(0)
    net = build_backbone(name, channels).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net.features(x))
    assert out.shape == (2, net.feature_dim)
    assert net.feature_dim == (512 if name.startswith("resnet18") else 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("size", "spatial"), [(32, (32, 16, 8)), (28, (28, 14, 7))])
def test_cifar_stage_shapes(size, spatial):
    net = build_backbone("resnet8", 3).eval()
    maps = net.feature_maps(torch.randn(1, 3, size, size))
    assert [tuple(m.shape[1:]) for m in maps] == [(w, s, s) for w, s in zip((16, 32, 64), spatial)]
    pooled = net(torch.randn(1, 3, size, size))
    assert pooled.shape == (1, 64)


def test_resnet18_cifar_stem_keeps_resolution():
    maps = build_backbone("resnet18-cifar").eval().feature_maps(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    maps = build_backbone("resnet18").eval().feature_maps(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_zero_pad_shortcut_matches_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64)
    out = ZeroPadShortcut(16, 32, 2)(x)
    reference = torch.zeros(2, 32, 4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            reference[:, :16, i, j] = x[:, :, 2 * i, 2 * j]
    assert torch.equal(out, reference)


def test_basic_block_matches_reference():
    torch.manual_seed(1)
    block = BasicBlock(16, 32, stride=2).double().train()
    x = torch.randn(3, 16, 8, 8, dtype=torch.float64)

    def bn(h, m):
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + m.eps) * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    h = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
    h = bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
    shortcut = torch.cat([x[:, :, ::2, ::2], torch.zeros(3, 16, 4, 4, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(block(x), F.relu(h + shortcut))


def test_resnet18_matches_torchvision_forward():
    torch.manual_seed(0)
    ours = build_backbone("resnet18").eval()
    reference = torchvision.models.resnet18(weights=None)
    reference.fc = torch.nn.Identity()
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.eval()(x))


def test_init_is_kaiming_fan_out_and_unit_batchnorm():
    torch.manual_seed(0)
    net = build_backbone("resnet110")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 64]
    weights = torch.cat([c.weight.flatten() for c in convs])
    expected_std = (2.0 / (9 * 64)) ** 0.5
    assert abs(weights.std().item() / expected_std - 1) < 0.02
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    zero = build_backbone("resnet8", zero_init_residual=True)
    assert all(torch.all(m.bn2.weight == 0) for m in zero.modules() if isinstance(m, BasicBlock))


@pytest.mark.parametrize("name", ["resnet8", "resnet18-cifar"])
def test_channels_last_gives_same_features(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        net = net.to(memory_format=torch.channels_last)
        fast = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


CHANNELS_LAST_CASES = [("resnet8", {}), ("resnet8", {"last_relu": False}), ("resnet8", {"block_relu": False}),
                       ("resnet18-cifar", {"last_relu": False})]


@pytest.mark.parametrize(("name", "options"), CHANNELS_LAST_CASES)
@pytest.mark.parametrize("stages", [False, True])
def test_channels_last_backward_keeps_the_format_and_the_gradients(name, options, stages):
    """Every batch norm receives its output's gradient channels_last (the mean pooling, the zero-padding
    shortcut and a loss on the stage maps would give NCHW there, the slow mixed-format kernels on CPUs), and
    every parameter's gradient equals the NCHW network's."""
    torch.manual_seed(0)
    plain = build_backbone(name, 3, **options).double()
    fast = build_backbone(name, 3, **options).double()
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    formats: list[bool] = []

    def record(_module, _inputs, out):
        out.register_hook(lambda g: formats.append(g.is_contiguous(memory_format=torch.channels_last)))

    for module in fast.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(record)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)

    def loss(net, images):
        if not stages:
            return net.features(images).square().sum()
        maps, pooled = net.stage_features(images)
        return pooled.square().sum() + sum(m.square().sum(3).sum() for m in maps)  # a width sum, as POD-spatial

    loss(plain, x).backward()
    loss(fast, x.to(memory_format=torch.channels_last)).backward()
    assert formats and all(formats)
    for (key, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=key)


def test_backward_reaches_every_parameter():
    net = build_backbone("resnet8", 1)
    net(torch.randn(4, 1, 28, 28)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_registry_errors_and_names():
    cifar = ["resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert BACKBONES == [*cifar, "resnet18-cifar", "resnet18"]
    with pytest.raises(ModelConfigError, match=r"unknown backbone name 'resnet33'.*resnet32.*resnet18-cifar"):
        build_backbone("resnet33")
    with pytest.raises(TypeError, match="name must be a str"):
        build_backbone(32)
    assert isinstance(build_backbone(" ResNet32 "), cil_models.CifarResNet)
    with pytest.raises(ModelConfigError, match="depth must be 6n\\+2"):
        cil_models.cifar_resnet(30)
    with pytest.raises(ModelConfigError, match="shortcut must be one of 'A', 'B'; got 'C'"):
        build_backbone("resnet8", shortcut="C")
    with pytest.raises(ModelConfigError, match="in_channels must be an int >= 1, got 0"):
        build_backbone("resnet18", 0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_backbone("resnet8", widths=3)


# ---- stage outputs and the ReLU options (PODNet, LUCIR) -------------------------------------

STAGE_CASES = [("resnet8", 32, 3), ("resnet20", 28, 3), ("resnet18-cifar", 32, 4), ("resnet18", 64, 4)]


@pytest.mark.parametrize(("name", "size", "stages"), STAGE_CASES)
@pytest.mark.parametrize("options", [{}, {"last_relu": False}])
def test_stage_features_are_the_feature_maps_and_the_pooled_features(name, size, stages, options):
    torch.manual_seed(0)
    net = build_backbone(name, **options).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps, pooled = net.stage_features(x)
        assert len(maps) == stages
        for ours, theirs in zip(maps, net.feature_maps(x)):
            assert torch.equal(ours, theirs)
        assert torch.equal(pooled, net.features(x)) and torch.equal(pooled, maps[-1].mean(dim=(2, 3)))


def _cifar_block_reference(block, x, relu_out):
    """One CIFAR basic block written out: conv-bn-relu-conv-bn, plus the shortcut, optional ReLU."""
    h = F.relu(block.bn1(block.conv1(x)))
    h = block.bn2(block.conv2(h)) + block.shortcut(x)
    return F.relu(h) if relu_out else h


@pytest.mark.parametrize(("options", "relu_pattern"), [({"last_relu": False}, "last"), ({"block_relu": False}, "none")])
def test_cifar_relu_options_match_a_blockwise_reference(options, relu_pattern, count_params):
    torch.manual_seed(0)
    default = build_backbone("resnet20", 3).double().eval()
    torch.manual_seed(0)
    net = build_backbone("resnet20", 3, **options).double().eval()
    assert count_params(net) == count_params(default)
    for a, b in zip(net.state_dict().values(), default.state_dict().values()):
        assert torch.equal(a, b)  # the options change no weight and no random draw
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        h = F.relu(net.bn1(net.conv1(x)))
        expected_maps = []
        blocks = [b for stage in (net.stage1, net.stage2, net.stage3) for b in stage]
        for i, block in enumerate(blocks):
            relu_out = relu_pattern == "last" and i < len(blocks) - 1
            h = _cifar_block_reference(block, h, relu_out)
            if block is net.stage1[-1] or block is net.stage2[-1] or block is net.stage3[-1]:
                expected_maps.append(h)
        maps, pooled = net.stage_features(x)
        for ours, theirs in zip(maps, expected_maps):
            torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(pooled, expected_maps[-1].mean(dim=(2, 3)))
        assert (pooled < 0).any()  # no final ReLU: negative features
        if relu_pattern == "last":
            assert (maps[1] >= 0).all()
            torch.testing.assert_close(F.relu(maps[-1]), default.feature_maps(x)[-1])
        else:
            assert (maps[0] < 0).any() and (maps[1] < 0).any()
    assert "last_relu=False" in repr(net) or "block_relu=False" in repr(net)


def test_resnet18_without_last_relu_matches_torchvision_blocks():
    torch.manual_seed(0)
    net = build_backbone("resnet18-cifar", last_relu=False).double().eval()
    torch.manual_seed(0)
    default = build_backbone("resnet18-cifar").double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        h = default.maxpool(default.relu(default.bn1(default.conv1(x))))
        h = default.layer3(default.layer2(default.layer1(h)))
        h = default.layer4[0](h)
        last = default.layer4[1]
        expected = last.bn2(last.conv2(F.relu(last.bn1(last.conv1(h))))) + h  # no downsample in block 2
        features = net.features(x)
        torch.testing.assert_close(features, expected.mean(dim=(2, 3)))
        assert (features < 0).any()
        torch.testing.assert_close(F.relu(net.feature_maps(x)[-1]), default.feature_maps(x)[-1])
    assert "last_relu=False" in repr(net)
