"""``--base-checkpoint``: one base model per protocol and seed, shared by the methods whose phase 0 is plain CE."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cil_train import RunConfig
from cil_train.cli import main
from cil_train.methods import Batch, methods
from cil_train.stages import Stage

PLAIN = sorted(name for name, cls in methods().items() if cls.plain_base)


def test_the_plain_base_methods_are_the_expected_ones():
    assert PLAIN == ["finetune", "icarl", "il-baseline", "lwf", "ssil", "wa"]


@pytest.mark.parametrize("name", PLAIN)
def test_a_plain_base_method_trains_phase_zero_with_plain_cross_entropy(name):
    """What ``plain_base`` promises: the default network, the shared main stage, uniform batches, CE."""
    cls = methods()[name]
    run = RunConfig(method=name, backbone="resnet8", epochs=3, base_epochs=5, lr=0.05, base_lr=0.2,
                    base_checkpoint="base.pt")  # SS-IL's own phase 0 (batches of B_n) gives way to the shared one
    method = cls(run)
    torch.manual_seed(0)
    net = method.build_network(1)
    torch.manual_seed(0)
    reference = methods()["finetune"](RunConfig(method="finetune", backbone="resnet8")).build_network(1)
    ctx = SimpleNamespace(t=0, num_old=0, num_new=4, num_seen=4, run=run, step=0, boundaries=[0, 4],
                          class_counts=torch.tensor([9.0, 5.0, 2.0, 1.0]), original_counts=torch.tensor([9, 5, 2, 1]),
                          memory_counts=torch.zeros(0), generator=torch.Generator().manual_seed(0), teacher=None,
                          device=torch.device("cpu"))
    ctx.model = method.grow_network(SimpleNamespace(**vars(ctx), model=net))
    reference.expand(4)
    assert {k: v.shape for k, v in ctx.model.state_dict().items()} == \
           {k: v.shape for k, v in reference.state_dict().items()}
    ctx.net = ctx.model
    (stage,) = method.stages(ctx)
    expected = Stage.from_run(run, t=0, lr=0.2)
    assert (stage.epochs, stage.lr, stage.batch_size, stage.schedule) == (5, 0.2, run.batch_size, "cosine")
    assert (stage.epochs, stage.lr, stage.lr_steps) == (expected.epochs, expected.lr, expected.lr_steps)
    assert stage.sampler is None and stage.parameters is None and stage.loss is None and not stage.after_memory
    x = torch.randn(6, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss, _ = method.loss(ctx, Batch(x=x, y=y, is_memory=torch.zeros(6, dtype=torch.bool)))
    assert torch.allclose(loss, F.cross_entropy(ctx.model(x).float(), y), atol=1e-6)


def test_a_base_model_is_trained_once_and_shared(tiny, tmp_path):
    base = tmp_path / "base" / "seed7.pt"
    argv, first = tiny("--method", "icarl", "--base-checkpoint", str(base), out="first")
    assert main(argv) == 0 and base.is_file()
    argv, second = tiny("--method", "wa", "--base-checkpoint", str(base), out="second")
    assert main(argv) == 0
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (first, second))
    assert a["acc_per_phase"][0] == b["acc_per_phase"][0]  # the same network after phase 1
    assert b["phases"][0]["epoch_losses"] == [] and len(a["phases"][0]["epoch_losses"]) == 2
    # the same method with and without the file ends identically: loading replaces training exactly
    argv, third = tiny("--method", "icarl", "--base-checkpoint", str(base), out="third")
    assert main(argv) == 0
    c = json.loads((third / "metrics.json").read_text())
    assert c["acc_per_phase"] == a["acc_per_phase"] and c["acc_matrix"] == a["acc_matrix"]


def test_a_base_model_of_another_base_phase_is_refused(tiny, tmp_path, capsys):
    base = tmp_path / "seed7.pt"
    argv, _ = tiny("--method", "finetune", "--base-checkpoint", str(base), out="one")
    assert main(argv) == 0
    argv, _ = tiny("--method", "finetune", "--base-checkpoint", str(base), "--lr", "0.05", out="two")
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds another base phase" in err and "stage" in err and "0.05" in err
    argv, _ = tiny("--method", "bsce", "--base-checkpoint", str(base), out="three")  # BalancedS-CE's phase 0
    assert main(argv) == 2
    assert "objective" in " ".join(capsys.readouterr().err.split())
