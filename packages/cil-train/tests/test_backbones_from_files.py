"""--backbone accepts ecosystem names and --backbone-weights loads a local file before phase 0."""

from __future__ import annotations

import torch

from cil_models import build_backbone
from cil_train.cli import build_parser, config_from_args, main
from cil_train.loop import Trainer


def test_backbone_weights_are_loaded_before_phase_0(tiny_argv, tmp_path):
    torch.manual_seed(123)
    source = build_backbone("resnet8", in_channels=1)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    out = tmp_path / "run"
    cfg = config_from_args(build_parser().parse_args(tiny_argv(out, "--backbone-weights", str(path))))
    model, first, resume = Trainer(cfg, out, log=lambda _m: None)._start()
    assert first == 0 and resume is None
    for name, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name].cpu(), value), name


def test_backbone_names_and_weight_files_are_checked_at_start(tiny_argv, tmp_path, capsys):
    assert main(tiny_argv(tmp_path / "a", "--backbone", "torchvision:no_such_net")) == 2
    assert "--backbone" in capsys.readouterr().err
    assert main(tiny_argv(tmp_path / "b", "--backbone-weights", str(tmp_path / "missing.pt"))) == 2
    assert "--backbone-weights" in capsys.readouterr().err


def test_a_torchvision_backbone_trains(tiny_argv, tmp_path):
    out = tmp_path / "tv"
    assert main(tiny_argv(out, "--backbone", "torchvision:resnet18", "--epochs", "1")) == 0
