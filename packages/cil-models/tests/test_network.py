"""IncrementalNet: forward, expansion, teacher copies, channels_last, checkpoints, compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cil_models import (
    BiasCorrection,
    CheckpointError,
    CosineLinear,
    HeadStateError,
    IncrementalLinear,
    IncrementalNet,
    ModelConfigError,
    build_backbone,
)


def tiny_net(**kw):
    torch.manual_seed(0)
    kw.setdefault("in_channels", 1)
    return IncrementalNet("resnet8", **kw)


def train_steps(net, steps=2, channels=1, size=16):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, channels, size, size, generator=g)
        y = torch.randint(0, net.num_classes, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


def test_forward_features_and_bookkeeping():
    net = tiny_net()
    assert net.feature_dim == 64 and net.num_classes == 0 and isinstance(net.head, IncrementalLinear)
    net.expand(4)
    net.expand(3)
    x = torch.randn(5, 1, 28, 28)
    net.eval()
    logits, features = net(x, return_features=True)
    assert logits.shape == (5, 7) and features.shape == (5, 64)
    assert torch.equal(features, net.features(x)) and torch.equal(logits, net(x))
    assert torch.equal(net.logits(features), logits)
    assert net.task_sizes == [4, 3] and net.boundaries == [0, 4, 7] and net.num_tasks == 2
    assert net.task_slices == [slice(0, 4), slice(4, 7)]


@pytest.mark.parametrize("head", ["linear", "cosine"])
@pytest.mark.parametrize("bias_correction", [None, "newest", "all"])
def test_expand_keeps_old_logits_bit_identical(head, bias_correction):
    net = tiny_net(head=head, bias_correction=bias_correction)
    net.expand(5)
    train_steps(net)
    net.eval()
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        before = net(x)
        before_uncorrected = net.head(net.features(x))
        net.expand(3)
        after = net(x)
    assert after.shape == (6, 8)
    if bias_correction == "newest":
        # "newest" corrects only the newest task: after expanding, the old classes are uncorrected.
        assert not torch.equal(before, before_uncorrected)  # the training steps moved alpha/beta
        assert torch.equal(after[:, :5], before_uncorrected)
    else:
        assert torch.equal(after[:, :5], before)


def test_bias_correction_is_applied_and_expanded():
    net = tiny_net(bias_correction="all")
    net.expand(3)
    net.expand(2)
    assert isinstance(net.bias_correction, BiasCorrection) and net.bias_correction.num_tasks == 2
    with torch.no_grad():
        net.bias_correction.alpha[1].fill_(2.0)
        net.bias_correction.beta[1].fill_(0.5)
    net.eval()
    x = torch.randn(2, 1, 16, 16)
    raw = net.head(net.features(x))
    expected = torch.cat([raw[:, :3], 2.0 * raw[:, 3:] + 0.5], dim=1)
    torch.testing.assert_close(net(x), expected)


def test_parameters_without_bias_correction():
    net = tiny_net(bias_correction="newest")
    net.expand(2)
    base = net.parameters_without_bias_correction()
    correction = list(net.bias_correction.parameters())
    assert len(base) + len(correction) == len(list(net.parameters()))
    assert not {id(p) for p in base} & {id(p) for p in correction}
    plain = tiny_net()
    plain.expand(2)
    assert len(plain.parameters_without_bias_correction()) == len(list(plain.parameters()))


def test_frozen_copy_is_independent_eval_and_gradient_free():
    net = tiny_net()
    net.expand(4)
    teacher = net.frozen_copy()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in net.parameters()) and net.training
    x = torch.randn(4, 1, 16, 16)
    reference = teacher(x).clone()
    train_steps(net)
    assert torch.equal(teacher(x), reference)
    assert not torch.equal(net.eval()(x), reference)
    assert teacher.config == net.config and teacher.config is not net.config


def test_deepcopy():
    net = tiny_net(head="cosine")
    net.expand(2)
    clone = copy.deepcopy(net)
    assert all(a is not b and torch.equal(a, b) for a, b in zip(clone.parameters(), net.parameters()))
    clone.expand(3)
    assert net.num_classes == 2 and clone.num_classes == 5


def test_channels_last_and_bf16_autocast():
    net = tiny_net(in_channels=3)
    net.expand(5)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        assert net.to_channels_last() is net
        conv = net.backbone.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        fast = net(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
        net.expand(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x.to(memory_format=torch.channels_last))
    assert low.dtype == torch.bfloat16 and low.shape == (2, 7)
    torch.testing.assert_close(low[:, :5].float(), plain, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"head": "cosine", "head_options": {"scale_init": 2.0}},
        {"bias_correction": "newest", "head_options": {"bias": False, "init": "torch"}},
        {"backbone_options": {"shortcut": "B"}},
    ],
)
def test_checkpoint_round_trip_gives_identical_outputs(kw, tmp_path):
    net = tiny_net(**kw)
    net.expand(4)
    train_steps(net)
    net.expand(3)
    train_steps(net)
    state = net.checkpoint_state()
    path = tmp_path / "phase1.pt"
    torch.save(state, path)
    train_steps(net, steps=1)  # the saved state must not follow later training
    loaded_state = torch.load(path, weights_only=True)
    restored = IncrementalNet.from_checkpoint_state(loaded_state)
    assert restored.task_sizes == [4, 3] and restored.config == net.config
    original = IncrementalNet.from_checkpoint_state(state)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), original.eval()(x))
    for key, value in state["state_dict"].items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_from_checkpoint_state_leaves_the_global_generator_alone():
    net = tiny_net()
    net.expand(3)
    state = net.checkpoint_state()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    IncrementalNet.from_checkpoint_state(state)
    assert torch.equal(torch.rand(4), expected)


def test_checkpoint_of_phase_t_loads_into_fresh_network_expanded_alike():
    net = tiny_net()
    net.expand(4)
    train_steps(net)
    state = net.checkpoint_state()
    fresh = tiny_net()
    fresh.expand_to(state["task_sizes"])
    fresh.load_state_dict(state["state_dict"])
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_custom_backbone_checkpoint_needs_a_fresh_module():
    torch.manual_seed(0)
    net = IncrementalNet(build_backbone("resnet8", 1))
    net.expand(3)
    state = net.checkpoint_state()
    assert state["config"]["backbone"] is None
    with pytest.raises(CheckpointError, match="custom backbone module; pass a fresh instance"):
        IncrementalNet.from_checkpoint_state(state)
    restored = IncrementalNet.from_checkpoint_state(state, backbone=build_backbone("resnet8", 1))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), net.eval()(x))
    with pytest.raises(CheckpointError, match="does not fit the rebuilt network"):
        IncrementalNet.from_checkpoint_state(state, backbone=build_backbone("resnet20", 1))


def test_checkpoint_errors():
    net = tiny_net()
    net.expand(2)
    state = net.checkpoint_state()
    with pytest.raises(CheckpointError, match="state\\['format'\\] must be 'cil_models.IncrementalNet'"):
        IncrementalNet.from_checkpoint_state({**state, "format": "other"})
    with pytest.raises(CheckpointError, match="state\\['version'\\] must be one of \\[1, 2\\]"):
        IncrementalNet.from_checkpoint_state({**state, "version": 99})
    with pytest.raises(CheckpointError, match="missing the keys \\['task_sizes'\\]"):
        IncrementalNet.from_checkpoint_state({k: v for k, v in state.items() if k != "task_sizes"})
    with pytest.raises(CheckpointError, match="does not fit the rebuilt network"):
        IncrementalNet.from_checkpoint_state({**state, "task_sizes": [3]})
    with pytest.raises(CheckpointError, match="must be a dict"):
        IncrementalNet.from_checkpoint_state([1, 2])


def test_expand_to_and_constructor_errors():
    net = tiny_net(bias_correction="all")
    net.expand_to([3, 2])
    net.expand_to([3, 2, 4])
    assert net.task_sizes == [3, 2, 4] and net.bias_correction.num_tasks == 3
    with pytest.raises(HeadStateError, match="do not start with"):
        net.expand_to([2, 2])
    with pytest.raises(ModelConfigError, match="head must be one of 'linear', 'cosine', 'local-similarity'; got 'mlp'"):
        IncrementalNet("resnet8", head="mlp")
    with pytest.raises(ModelConfigError, match="unknown backbone name 'vit'"):
        IncrementalNet("vit")
    with pytest.raises(ModelConfigError, match="plain values"):
        IncrementalNet("resnet8", head_options={"init": torch.zeros(1)})
    with pytest.raises(ModelConfigError, match="feature_dim"):
        IncrementalNet(torch.nn.Linear(3, 3))
    with pytest.raises(ModelConfigError, match="backbone_options can only be used with a backbone name"):
        IncrementalNet(build_backbone("resnet8"), backbone_options={"shortcut": "B"})
    with pytest.raises(TypeError, match="backbone must be a backbone name"):
        IncrementalNet(3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        IncrementalNet("resnet8", head_options={"colour": "red"})
    assert isinstance(IncrementalNet("resnet8", head="cosine").head, CosineLinear)


def test_torch_compile_runs_and_matches_eager():
    net = tiny_net(bias_correction="all")
    net.expand(3)
    net.expand(2)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 1, 16, 16)
    out = compiled(x)
    torch.testing.assert_close(out, net(x))
    out.sum().backward()
    assert all(p.grad is not None for p in net.head.parameters())
    net.expand(4)
    assert compiled(x).shape == (4, 9)
