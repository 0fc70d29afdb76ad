"""BiC: the stage-2 loss against a plain float64 formula, and what each of the two stages may change."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from cil_train import RunConfig
from cil_train.cli import main
from cil_train.methods.bic import BiC, bias_correction_loss


def test_bias_correction_loss_matches_plain_float64_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    alpha = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    q = torch.cat([z[:, :3], alpha * z[:, 3:] + beta], 1)  # the newest task = classes 3, 4
    got = bias_correction_loss(q, y, beta)
    # plain: mean over samples of -log softmax(q)_y, plus 0.05 β² (α unregularised)
    plain = sum(-(q[i, y[i]] - torch.log(torch.exp(q[i]).sum())) for i in range(7)) / 7 + 0.05 * beta[0] ** 2
    assert torch.allclose(got, plain, atol=1e-12, rtol=0)
    ga, gb = torch.autograd.grad(got, (alpha, beta), retain_graph=True)
    pa, pb = torch.autograd.grad(plain, (alpha, beta))
    assert torch.allclose(ga, pa, atol=1e-12) and torch.allclose(gb, pb, atol=1e-12)
    torch.autograd.gradcheck(lambda a, b: bias_correction_loss(torch.cat([z[:, :3], a * z[:, 3:] + b], 1), y, b),
                             (alpha, beta))


def test_stage_one_trains_all_but_the_bias_layer_and_stage_two_only_the_newest_pair():
    method = BiC(RunConfig(method="bic", backbone="resnet8", epochs=4))
    net = method.build_network(1)
    net.expand(2)
    net.expand(2)
    main_stage, bias_stage = method.stages(SimpleNamespace(t=1))
    bc = net.bias_correction
    assert {id(p) for p in main_stage.trainable(net)} == {id(p) for p in net.parameters_without_bias_correction()}
    assert [id(p) for p in bias_stage.trainable(net)] == [id(bc.alpha[-1]), id(bc.beta[-1])]
    assert bias_stage.epochs == 8 and bias_stage.lr_steps == (2, 5, 6, 7) and not bias_stage.augment
    assert main_stage.train_mode and not bias_stage.train_mode
    assert method.stages(SimpleNamespace(t=0))[0].name == "main" and len(method.stages(SimpleNamespace(t=0))) == 1


def test_bic_runs_both_stages_and_leaves_the_backbone_alone_in_stage_two(tiny, monkeypatch):
    from cil_train import loop

    snapshots = []
    original = loop.Trainer._run_stage

    def state(model):  # parameters and buffers (the batch norms' running statistics)
        return {**dict(model.named_parameters()), **dict(model.named_buffers())}

    def spy(self, ctx, k, stage, *args, **kwargs):
        before = {n: p.detach().clone() for n, p in state(ctx.model).items()}
        original(self, ctx, k, stage, *args, **kwargs)
        changed = {n for n, p in state(ctx.model).items() if not torch.equal(p, before[n])}
        snapshots.append((ctx.t, stage.name, changed))

    monkeypatch.setattr(loop.Trainer, "_run_stage", spy)
    argv, out = tiny("--method", "bic", "--bic-bias-epochs", "2", "--epochs", "1")
    assert main(argv) == 0
    bias = [changed for t, name, changed in snapshots if name == "bias-correction"]
    assert len(bias) == 2  # phases 2 and 3
    for changed in bias:  # not even the running statistics: the bias stage runs the network in eval mode
        assert changed and all(n.startswith("bias_correction.") for n in changed)
    stage_one = [changed for t, name, changed in snapshots if name == "main" and t > 0]
    assert stage_one and all(any("running_mean" in n for n in changed) for changed in stage_one)  # stage 1 does
    m = json.loads((out / "metrics.json").read_text())
    assert [len(p["epoch_losses"]) for p in m["phases"]] == [1, 3, 3]
    assert "bic_alpha" in m["phases"][1] and "bic_beta" in m["phases"][2]
    assert m["phases"][1]["bic_alpha"] != 1.0  # the pair was fitted
