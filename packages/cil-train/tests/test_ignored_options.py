"""An option that the other options leave unread is a ConfigError, for every method: a probe row that sets
it would otherwise repeat the default row in silence (``--podnet-nca paper`` on podnet-bsce-relaxed did)."""

from __future__ import annotations

import attrs
import pytest

from cil_train.config import RunConfig, check_config
from cil_train.errors import ConfigError
from cil_train.methods import methods


def _check(method: str, options: dict) -> None:
    check_config(RunConfig(method=method, backbone="resnet8", method_options=options))


@pytest.mark.parametrize(("method", "options", "needle"), [
    ("podnet-bsce-relaxed", {"podnet_nca": "paper"}, "--podnet-nca has no effect with --method podnet-bsce-relaxed"),
    ("podnet-bsce", {"podnet_margin": 0.3}, "--podnet-margin has no effect"),
    ("podnet-bsce", {"podnet_finetune_epochs": 5}, "no balanced finetuning"),
    ("lucir-bsce", {"lucir_cbf": True}, "--lucir-cbf has no effect with --method lucir-bsce"),
    ("lucir-bsce-relaxed", {"lucir_cbf_epochs": 3}, "--lucir-cbf-epochs has no effect"),
    ("wa", {"wa_align": False, "wa_p": 1.0}, "--wa-p has no effect with --method wa: weight aligning is off"),
    ("wa", {"wa_align": False, "wa_clamp": False}, "--wa-clamp has no effect"),
    ("dgr", {"dgr_regularized_softmax": False, "dgr_offsets": "grad"}, "--dgr-offsets has no effect"),
    ("dgr", {"dgr_task_balance": "never", "dgr_eta": 0.5}, "--dgr-eta has no effect"),
    ("ssil", {"ssil_kd": "none", "kd_temperature": 3.0}, "--kd-temperature has no effect with --method ssil"),
    ("il-baseline", {"il_correction": "class-oversampling", "il_finetune_epochs": 3},
     "--il-finetune-epochs has no effect"),
    ("il-baseline", {"il_finetune_epochs": 3}, "here none"),
    ("bsce-meta", {"meta_adam_lr": 0.1}, "--meta-adam-lr has no effect"),
    ("bsce-meta", {"meta_optimizer": "adam", "meta_lr": 0.5}, "--meta-lr has no effect"),
    ("der", {"der_balanced_epochs": 5}, "--der-balanced-epochs has no effect with --method der"),
    ("der-jioc", {"der_bias_correction": "wa", "der_balanced_temperature": 1.0}, "--der-balanced-temperature"),
    ("der-jioc", {"jioc": "ic", "jioc_gamma1": 2.0}, "--jioc-gamma1 has no effect with --method der-jioc"),
    ("der-jioc", {"jioc": "none", "kd_temperature": 3.0}, "--kd-temperature has no effect"),
    ("der-jioc", {"jioc": "oc", "jioc_normalize": True}, "--jioc oc has no input coordination"),
    ("icarl-jioc", {"jioc": "ic", "jioc_squared": True}, "--jioc-squared has no effect"),
    ("icarl-jioc", {"jioc": "none", "jioc_detach": False}, "--jioc-detach has no effect"),
    ("foster-jioc", {"jioc": "ic", "jioc_gamma2": 0.5}, "--jioc ic has no output coordination"),
])
def test_an_option_the_others_leave_unread_is_an_error(method, options, needle):
    with pytest.raises(ConfigError, match=needle.replace("-", "\\-")):
        _check(method, options)


@pytest.mark.parametrize(("method", "options"), [
    ("podnet", {"podnet_nca": "paper", "podnet_finetune_epochs": 5}), ("lucir", {"lucir_cbf": True}),
    ("podnet-bsce-relaxed", {"podnet_nca": "code", "podnet_proxies": 1}),  # the default value, an option it reads
    ("wa", {"wa_p": 1.0, "wa_clamp": False}),
    ("wa", {"wa_align": False, "wa_p": 2.0}),          # the default value: nothing is changed in silence
    ("dgr", {"dgr_offsets": "grad", "dgr_eta": 0.5, "dgr_task_balance": "while-new-exceeds-memory"}),
    ("ssil", {"ssil_kd": "global", "kd_temperature": 3.0}),
    ("il-baseline", {"il_correction": "balanced-finetuning", "il_finetune_epochs": 3}),
    ("bsce-meta", {"meta_lr": 0.5}), ("bsce-meta", {"meta_optimizer": "adam", "meta_adam_lr": 0.1}),
    ("der", {"der_bias_correction": "balanced", "der_balanced_epochs": 5, "der_balanced_lr": 0.05}),
    ("der-jioc", {"jioc": "oc", "jioc_gamma1": 2.0, "kd_temperature": 3.0, "jioc_squared": True}),
    ("icarl-jioc", {"jioc": "ic", "jioc_gamma1": 2.0, "kd_temperature": 3.0, "jioc_normalize": True}),
    ("icarl-jioc", {"jioc": "none", "jioc_gamma1": 2.0}),   # γ1 weighs iCaRL's KD without L_OC
    ("foster-jioc", {"jioc": "none", "jioc_gamma1": 0.5, "kd_temperature": 3.0}),
])
def test_options_the_method_reads_are_accepted(method, options):
    _check(method, options)


def _option_values(field: attrs.Attribute) -> list:
    """A few values of a method option: its default, the other choices, the other boolean."""
    choices = getattr(field.validator, "choices", None)
    if choices:
        return list(choices)
    if isinstance(field.default, bool):
        return [True, False]
    return [field.default]


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_method_accepts_its_defaults_and_names_real_fields(name):
    """Each method runs with its default options, and what ``ignored_options`` names is a field of its
    options for every value of its choice and boolean options (one at a time), so a renamed option cannot
    turn a rule off in silence."""
    method = methods()[name]
    _check(name, {})
    fields = {f.name: f for f in attrs.fields(method.Options)}
    for field in fields.values():
        for value in _option_values(field):
            options = method.Options(**{field.name: value})
            assert set(method.ignored_options(options)) <= set(fields), (name, field.name, value)


def test_a_run_started_before_a_rule_existed_still_resumes(tiny_argv, tmp_path, monkeypatch):
    """The rules guard new command lines only: a run folder written when the combination was accepted (here
    ``--no-wa-align --no-wa-clamp``, made before the WA rule by switching the rule off) resumes to its end."""
    import json

    from cil_train import loop
    from cil_train.cli import main

    wa = methods()["wa"]
    argv = tiny_argv(tmp_path / "run", "--method", "wa", "--no-wa-align", "--no-wa-clamp", "--epochs", "1",
                     "--threads", "1")
    assert main(argv) == 2  # today's rule
    monkeypatch.setattr(wa, "ignored_options", classmethod(lambda cls, options: {}))
    original = loop.Trainer._run_phase

    def interrupt_at_phase_3(self, t, *args, **kwargs):
        if t == 2:
            raise KeyboardInterrupt
        return original(self, t, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "_run_phase", interrupt_at_phase_3)
    assert main(argv) == 130
    monkeypatch.undo()  # the rule is back, the loop is whole
    assert main(["--resume", str(tmp_path / "run"), "--progress", "none"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["complete"] is not False and len(metrics["acc_per_phase"]) == 3
