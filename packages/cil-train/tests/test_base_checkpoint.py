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


# Other values for every option a method declares ``incremental_only`` (a combination its rules accept; an
# option its defaults make ignored, e.g. LUCIR's class-balanced finetuning under BalancedS-CE, is left out).
_JIOC_LATER = {"kd_temperature": 3.0, "jioc_gamma1": 0.5, "jioc_gamma2": 0.5, "jioc_squared": True}
_DER_LATER = {"der_aux_weight": 0.5, "der_bias_correction": "balanced", "der_balanced_epochs": 1,
              "der_balanced_lr": 0.01, "der_balanced_temperature": 2.0}
_FOSTER_LATER = {"kd_temperature": 3.0, "foster_beta1": 0.0, "foster_beta2": 0.5, "foster_counts": "official",
                 "foster_compression_epochs": 1, "foster_compression_lr": 0.01, "foster_eval": "student",
                 "foster_record_both": False}
_LUCIR_LATER = {"lucir_lambda_base": 2.0, "lucir_margin": 0.3, "lucir_k": 1, "lucir_mr_weight": 0.5,
                "lucir_mr_reduction": "sum_over_k", "lucir_imprint": False}
_PODNET_LATER = {"podnet_flat": 0.5, "podnet_spatial": 1.0}
LATER = {
    "dgr": {"kd_temperature": 3.0, "dgr_dakd": False, "dgr_kd_weight_max": 0.5,
            "dgr_task_balance": "while-new-exceeds-memory", "dgr_eta": 0.5},
    "der": _DER_LATER,
    "der-jioc": {**_DER_LATER, **_JIOC_LATER},
    "foster": _FOSTER_LATER,
    "foster-jioc": {**_FOSTER_LATER, **_JIOC_LATER},
    "icarl-jioc": _JIOC_LATER,
    "lucir": {**_LUCIR_LATER, "lucir_cbf": True, "lucir_cbf_epochs": 1},
    "lucir-bsce": _LUCIR_LATER,
    "lucir-bsce-relaxed": _LUCIR_LATER,
    "podnet": {**_PODNET_LATER, "podnet_finetune_epochs": 1, "podnet_finetune_lr": 0.01},
    "podnet-bsce": _PODNET_LATER,
    "podnet-bsce-relaxed": _PODNET_LATER,
    "bic": {"kd_temperature": 3.0, "bic_validation": 0.3, "bic_bias_epochs": 1, "bic_bias_lr": 0.01},
}


def _flags(values: dict) -> list[str]:
    from cil_train.options import option_name

    out: list[str] = []
    for field, value in values.items():
        name = option_name(field)
        out += [name if value else "--no-" + name[2:]] if isinstance(value, bool) else [name, str(value)]
    return out


def test_every_method_declaring_incremental_only_options_is_checked():
    declared = {name: cls for name, cls in methods().items() if cls.incremental_only}
    assert sorted(declared) == sorted(LATER)
    for name, cls in declared.items():
        later = set(LATER[name])
        assert later <= set(cls.incremental_only) <= later | set(cls.ignored_options(cls.Options())), name
        assert not later & set(cls.ignored_options(cls.Options(**LATER[name]))), name


@pytest.mark.parametrize("name", sorted(LATER))
def test_the_variants_of_a_method_that_differ_in_later_phases_share_its_base_model(name, tiny, tmp_path):
    """Phase 0 trained with every ``incremental_only`` option changed is the same network bit for bit (the
    cache names it with the same key), and a default run that loads it ends exactly as one that trained it."""
    short = ("--method", name, "--phases", "2", "--epochs", "1")
    if methods()[name].memory == "none":  # the tiny runs keep 5 exemplars a class; 0 is "no memory"
        short += ("--memory-per-class", "0")
    argv, trained = tiny(*short, "--base-cache", str(tmp_path / "a"), out="trained")
    assert main(argv) == 0
    argv, _ = tiny(*short, *_flags(LATER[name]), "--base-cache", str(tmp_path / "b"), out="variant")
    assert main(argv) == 0
    (a,), (b,) = (sorted((tmp_path / d).iterdir()) for d in ("a", "b"))
    assert a.name == b.name and a.name.startswith(f"{name}-seed7-")
    sa, sb = (torch.load(f, weights_only=True)["net"]["state_dict"] for f in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    argv, loaded = tiny(*short, "--base-cache", str(tmp_path / "b"), out="loaded")
    assert main(argv) == 0
    ma, mc = (json.loads((f / "metrics.json").read_text()) for f in (trained, loaded))
    assert mc["phases"][0]["epoch_losses"] == [] and ma["phases"][0]["epoch_losses"] != []
    assert mc["acc_per_phase"] == ma["acc_per_phase"] and mc["acc_matrix"] == ma["acc_matrix"]


def test_the_plain_methods_share_one_cached_base_model_and_the_cache_excludes_a_file(tiny, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv, _ = tiny("--method", "finetune", "--base-cache", str(cache), out="one")
    assert main(argv) == 0
    argv, _ = tiny("--method", "wa", "--base-cache", str(cache), out="two")
    assert main(argv) == 0
    (only,) = cache.iterdir()
    assert only.name.startswith("plain-ce-seed7-")
    assert "the base model of" in capsys.readouterr().out
    argv, _ = tiny("--method", "wa", "--base-cache", str(cache), "--base-checkpoint", str(only), out="three")
    assert main(argv) == 2
    assert "exclusive" in capsys.readouterr().err
