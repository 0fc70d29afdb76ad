"""IncrementalNet with several feature extractors (DER, FOSTER): growth, freezing, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cil_models import CheckpointError, HeadStateError, IncrementalNet, ModelConfigError, build_backbone


def tiny_net(**kw):
    torch.manual_seed(0)
    kw.setdefault("in_channels", 1)
    return IncrementalNet("resnet8", **kw)


def sgd_steps(net, steps=3, size=16):
    """A few SGD steps (momentum, weight decay) of the whole network in train mode."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    net.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 1, size, size, generator=g)
        y = torch.randint(0, net.num_classes, (8,), generator=g)
        opt.zero_grad()
        logits, features = net(x, return_features=True)
        loss = F.cross_entropy(logits, y)
        if net.aux_head is not None:
            loss = loss + F.cross_entropy(net.aux_logits(features), y % net.aux_head.out_features)
        loss.backward()
        opt.step()


def der_net(phases=3, **kw):
    """A DER-style network: per phase a new extractor copied from the newest, the old ones frozen."""
    net = tiny_net(**kw)
    net.expand(3)
    sgd_steps(net, steps=1)
    for _ in range(phases - 1):
        net.add_extractor()
        net.freeze_extractors()
        net.expand(2)
        sgd_steps(net, steps=1)
    return net


def test_add_extractor_copies_the_newest_and_grows_features_and_head():
    net = tiny_net()
    net.expand(3)
    sgd_steps(net, steps=2)
    old_weight = net.head.full_weight().detach().clone()
    index = net.add_extractor()
    assert index == 1 and net.num_extractors == 2 and net.backbone is net.extractors[1]
    assert net.feature_dim == 128 and net.extractor_dims == [64, 64]
    assert net.extractor_slices == [slice(0, 64), slice(64, 128)]
    for a, b in zip(net.extractors[0].state_dict().values(), net.extractors[1].state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert net.head.in_features == 128 and torch.equal(net.head.full_weight()[:, :64].detach(), old_weight)
    x = torch.randn(4, 1, 16, 16)
    net.eval()
    with torch.no_grad():
        per = net.features_per_extractor(x)
        assert [p.shape for p in per] == [(4, 64), (4, 64)] and torch.equal(per[0], per[1])
        assert torch.equal(net.features(x), torch.cat(per, dim=1))
        logits, features = net(x, return_features=True)
        assert logits.shape == (4, 3) and torch.equal(features, net.features(x))


def test_zero_new_columns_keep_the_old_logits():
    net = tiny_net()
    net.expand(3)
    sgd_steps(net)
    net.eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        before = net(x)
        net.add_extractor(init="fresh", new_columns="zero")
        torch.testing.assert_close(net(x), before, rtol=1e-6, atol=1e-6)
    assert torch.all(net.head.full_weight()[:, 64:] == 0)


def test_fresh_extractor_is_newly_initialised_and_placed_like_the_old():
    net = tiny_net(in_channels=3).to_channels_last()
    net.expand(2)
    net.add_extractor(init="fresh")
    old, new = net.extractors
    assert not torch.equal(old.conv1.weight, new.conv1.weight)
    assert new.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    custom = IncrementalNet(build_backbone("resnet8", 1))
    with pytest.raises(ModelConfigError, match="init='fresh' needs a network built from a backbone name"):
        custom.add_extractor(init="fresh")
    custom.add_extractor()
    assert custom.num_extractors == 2
    with pytest.raises(ModelConfigError, match="init must be one of 'copy', 'fresh'"):
        net.add_extractor(init="zeros")


def test_freeze_keeps_batchnorm_in_eval_and_runs_without_grad():
    net = tiny_net()
    net.expand(3)
    net.add_extractor()
    net.add_extractor()
    net.freeze_extractors()
    assert net.frozen_extractors == [0, 1]
    net.train()
    assert net.training and net.extractors[2].training
    assert not net.extractors[0].training and not net.extractors[1].training
    assert all(not m.training for m in net.extractors[0].modules())
    assert all(not p.requires_grad for p in net.extractors[0].parameters())
    per = net.features_per_extractor(torch.randn(2, 1, 16, 16))
    assert not per[0].requires_grad and not per[1].requires_grad and per[2].requires_grad
    net.unfreeze_extractors([1])
    assert net.frozen_extractors == [0] and net.extractors[1].training
    assert all(p.requires_grad for p in net.extractors[1].parameters())
    net.freeze_extractors([-2])
    assert net.frozen_extractors == [0, 1]
    with pytest.raises(HeadStateError, match=r"extractor index must be in \[-3, 2\]"):
        net.freeze_extractors([3])


def test_frozen_extractors_do_not_change_during_training():
    net = der_net(phases=2)
    net.add_extractor()
    net.freeze_extractors()
    net.expand(2)
    net.set_aux_head(3)
    frozen_before = [{k: v.clone() for k, v in net.extractors[i].state_dict().items()} for i in (0, 1)]
    newest_before = {k: v.clone() for k, v in net.extractors[2].state_dict().items()}
    assert any("running_mean" in k for k in frozen_before[0])
    sgd_steps(net, steps=3)
    for i in (0, 1):
        for key, value in net.extractors[i].state_dict().items():
            assert torch.equal(value, frozen_before[i][key]), (i, key)  # weights and BN statistics, bitwise
    changed = [k for k, v in net.extractors[2].state_dict().items() if not torch.equal(v, newest_before[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("conv1.weight") for k in changed)


def test_parameter_count():
    net = tiny_net(bias_correction="newest")
    net.expand(3)
    net.add_extractor()
    net.freeze_extractors()
    net.set_aux_head(4)
    counts = net.parameter_count()
    backbone = 74_640 - 2 * 16 * 9
    assert counts["extractors"] == [
        {"total": backbone, "trainable": 0, "frozen": True},
        {"total": backbone, "trainable": backbone, "frozen": False},
    ]
    assert counts["head"] == {"total": 3 * 128 + 3, "trainable": 3 * 128 + 3}
    assert counts["bias_correction"] == {"total": 2, "trainable": 2}
    assert counts["aux_head"] == {"total": 4 * 64 + 4, "trainable": 4 * 64 + 4}
    assert counts["total"] == sum(p.numel() for p in net.parameters())
    assert counts["trainable"] == sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_keep_only_extractor_returns_to_one_backbone():
    net = der_net(phases=2)
    head_weight = net.head.full_weight().detach().clone()
    x = torch.randn(3, 1, 16, 16)
    net.eval()
    with torch.no_grad():
        first = net.features_per_extractor(x)[0]
    net.keep_only_extractor(0)
    assert net.num_extractors == 1 and net.feature_dim == 64 and net.frozen_extractors == [0]
    assert torch.equal(net.head.full_weight().detach(), head_weight[:, :64])
    with torch.no_grad():
        assert torch.equal(net.features(x), first)
        torch.testing.assert_close(net(x), F.linear(first, head_weight[:, :64], net.head.full_bias()))
    net.unfreeze_extractors()
    sgd_steps(net, steps=1)


def test_aux_head_reads_the_newest_extractor():
    net = der_net(phases=2)
    aux = net.set_aux_head(3)  # DER: C_new + 1 outputs
    assert aux is net.aux_head and aux.in_features == 64
    x = torch.randn(2, 1, 16, 16)
    features = net.eval().features(x)
    torch.testing.assert_close(net.aux_logits(features), aux(features[:, 64:]))
    assert any(p is aux.weight for p in net.parameters_without_bias_correction())
    net.remove_aux_head()
    assert net.aux_head is None
    with pytest.raises(HeadStateError, match="no auxiliary head"):
        net.aux_logits(features)


@pytest.mark.parametrize("kw", [{}, {"head": "cosine", "bias_correction": "newest"}])
def test_checkpoint_round_trip_with_several_extractors(kw, tmp_path):
    net = der_net(phases=3, **kw)
    net.set_aux_head(3)
    state = net.checkpoint_state()
    assert state["version"] == 2 and state["extractors"] == {"count": 3, "frozen": [True, True, False]}
    assert state["aux_head"] == 3
    torch.save(state, tmp_path / "der.pt")
    restored = IncrementalNet.from_checkpoint_state(torch.load(tmp_path / "der.pt", weights_only=True))
    assert restored.frozen_extractors == [0, 1] and restored.task_sizes == [3, 2, 2]
    assert list(restored.state_dict()) == list(net.state_dict())
    for key, value in state["state_dict"].items():
        assert torch.equal(restored.state_dict()[key], value), key
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), net.eval()(x))
    # Training the restored network moves exactly what training the original moves.
    sgd_steps(net, steps=2)
    sgd_steps(restored, steps=2)
    for (key, a), b in zip(net.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), key


def test_version_1_checkpoints_still_load():
    net = tiny_net()
    net.expand(3)
    sgd_steps(net, steps=1)
    state = net.checkpoint_state()
    v1 = {
        "format": state["format"],
        "version": 1,
        "task_sizes": state["task_sizes"],
        "config": state["config"],
        "state_dict": {k.replace("extractors.0.", "backbone.", 1): v for k, v in state["state_dict"].items()},
    }
    assert any(k.startswith("backbone.") for k in v1["state_dict"])
    restored = IncrementalNet.from_checkpoint_state(v1)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), net.eval()(x))
    fresh = tiny_net()
    fresh.expand(3)
    fresh.load_state_dict(v1["state_dict"])  # plain load_state_dict of a version-1 state dict
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))
    with pytest.raises(CheckpointError, match="missing the keys \\['aux_head', 'extractors'\\]"):
        IncrementalNet.from_checkpoint_state({**v1, "version": 2})
    with pytest.raises(CheckpointError, match="state\\['extractors'\\] must be"):
        IncrementalNet.from_checkpoint_state({**state, "extractors": {"count": 2, "frozen": [True]}})


def test_frozen_copy_and_stage_features():
    net = der_net(phases=2)
    teacher = net.frozen_copy()
    assert teacher.frozen_extractors == [0] and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    with pytest.raises(HeadStateError, match="stage_features needs a network with one extractor"):
        net.stage_features(torch.randn(1, 1, 16, 16))
    single = tiny_net(backbone_options={"last_relu": False})
    single.expand(2)
    x = torch.randn(2, 1, 16, 16)
    maps, features = single.eval().stage_features(x)
    assert [m.shape[1] for m in maps] == [16, 32, 64] and torch.equal(features, single.features(x))
    assert torch.equal(single.logits(features), single(x))


def test_expand_imprinted_and_explicit_rows():
    cosine = tiny_net(head="cosine", bias_correction="newest")
    cosine.expand(2)
    cosine.expand_imprinted(torch.randn(3, 64))
    assert cosine.task_sizes == [2, 3] and cosine.bias_correction.num_tasks == 2
    linear = tiny_net()
    linear.expand(2, weight=torch.ones(2, 64), bias=torch.zeros(2))
    assert torch.equal(linear.head.full_weight(), torch.ones(2, 64))
    with pytest.raises(ModelConfigError, match="expand_imprinted needs a 'cosine' or 'local-similarity' head"):
        linear.expand_imprinted(torch.randn(3, 64))


def test_torch_compile_with_frozen_extractors():
    net = der_net(phases=2, bias_correction="newest")
    net.train()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 1, 16, 16)
    out = compiled(x)
    torch.testing.assert_close(out, net(x))
    out.sum().backward()
    assert all(p.grad is None for p in net.extractors[0].parameters())
    assert all(p.grad is not None for p in net.extractors[1].parameters())
