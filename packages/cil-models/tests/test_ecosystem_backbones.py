"""Backbones from torchvision and timm (``torchvision:<name>``, ``timm:<name>``) and local weight files
(``build_backbone(name, weights=PATH)``): shapes, feature widths, checkpoints, weight loading (nothing is
downloaded). The timm tests run only where timm is installed (the ``cil-models[timm]`` extra)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision

from cil_models import IncrementalNet, ModelConfigError, build_backbone
from cil_models.ecosystem import EcosystemBackbone, load_backbone_weights
from cil_models.registry import check_backbone_name

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'cil-models[timm]')")


@pytest.mark.parametrize("name, width", [("torchvision:resnet18", 512), ("torchvision:mobilenet_v3_small", 576),
                                         ("torchvision:shufflenet_v2_x0_5", 1024)])
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_models_become_feature_extractors(name, width, channels):
    torch.manual_seed(0)
    backbone = build_backbone(name, channels)
    assert isinstance(backbone, EcosystemBackbone) and backbone.feature_dim == width
    backbone.eval()
    x = torch.randn(2, channels, 32, 32)
    out = backbone(x)
    assert out.shape == (2, width) and torch.equal(out, backbone.features(x))


def test_incremental_net_with_a_torchvision_backbone_trains_grows_and_round_trips():
    torch.manual_seed(0)
    net = IncrementalNet("torchvision:resnet18", in_channels=1)
    net.expand(3)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert net.backbone.model.conv1.weight.grad is not None and net.feature_dim == 512
    net.add_extractor(init="fresh")
    net.freeze_extractors()
    net.expand(2)
    net.eval()
    copy = IncrementalNet.from_checkpoint_state(net.checkpoint_state())
    copy.eval()
    assert torch.equal(copy(x), net(x)) and copy.num_extractors == 2


def test_weights_from_a_local_file_load_into_a_torchvision_backbone(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)  # a full model, its fc included
    path = tmp_path / "resnet18.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    backbone = build_backbone("torchvision:resnet18", 3, weights=str(path))
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(backbone.model.state_dict()[key], value), key
    gray = build_backbone("torchvision:resnet18", 1, weights=str(path))  # RGB filters summed
    assert torch.allclose(gray.model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    net = IncrementalNet("torchvision:resnet18", backbone_options={"weights": str(path)})
    assert torch.equal(net.backbone.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_weights_load_into_the_built_in_backbones_too(tmp_path):
    torch.manual_seed(2)
    source = build_backbone("resnet8", 3)
    path = tmp_path / "r8.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(3)
    loaded = build_backbone("resnet8", 3, weights=path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))


def test_bad_names_and_weight_files_raise_one_clear_error(tmp_path):
    with pytest.raises(ModelConfigError, match="unknown torchvision model 'resnet19'"):
        build_backbone("torchvision:resnet19")
    with pytest.raises(ModelConfigError, match="give a model name"):
        build_backbone("torchvision:")
    with pytest.raises(ModelConfigError, match="no such file"):
        build_backbone("resnet8", weights=str(tmp_path / "missing.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save(build_backbone("resnet20").state_dict(), wrong)
    with pytest.raises(ModelConfigError, match="unexpected"):
        build_backbone("resnet8", weights=str(wrong))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelConfigError, match="cannot be read"):
        load_backbone_weights(build_backbone("resnet8"), junk)
    with pytest.raises(ModelConfigError, match="takes no options"):
        build_backbone("torchvision:resnet18", last_relu=False)


def test_check_backbone_name_builds_nothing_and_names_the_choices():
    for ok in ("resnet32", "torchvision:resnet18", "torchvision:vit_b_16"):
        check_backbone_name(ok)
    with pytest.raises(ModelConfigError, match="torchvision:<model name>, timm:<model name>"):
        check_backbone_name("vit")
    with pytest.raises(ModelConfigError, match="unknown torchvision model"):
        check_backbone_name("torchvision:nope")
    if not HAS_TIMM:
        with pytest.raises(ModelConfigError, match=r"cil-models\[timm\]"):
            check_backbone_name("timm:resnet10t")


@needs_timm
def test_timm_models_become_feature_extractors_and_load_local_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    check_backbone_name("timm:resnet10t")
    with pytest.raises(ModelConfigError, match="unknown timm model"):
        check_backbone_name("timm:not_a_model")
    backbone = build_backbone("timm:resnet10t", 1)
    assert backbone.feature_dim == 512
    assert backbone(torch.randn(2, 1, 28, 28)).shape == (2, 512)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    path = tmp_path / "r10t.pt"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("timm:resnet10t", 3, weights=str(path))
    assert torch.equal(loaded.model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    net = IncrementalNet("timm:resnet10t", in_channels=1)
    net.expand(2)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 2)
