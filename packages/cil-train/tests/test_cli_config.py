"""Options, presets and the one-paragraph errors of bad configurations (exit code 2)."""

from __future__ import annotations

import json

import pytest

from cil_train import RunConfig
from cil_train.cli import build_parser, config_from_args, main
from cil_train.config import config_fields, option_name
from cil_train.errors import ConfigError
from cil_train.methods import methods

METHODS = methods()
from cil_train.presets import PRESETS


def cfg_of(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_help_lists_every_method_preset_and_option_with_default(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in METHODS:
        assert f"  {name} " in text
    for name in PRESETS:
        assert name in text
    for f in config_fields():
        assert option_name(f.name) in text
    assert "(default: dgr)" in text and "(default: 0.1)" in text


def test_expected_methods_are_registered():
    assert set(METHODS) == {"finetune", "il-baseline", "bsce", "bsce-meta", "bsce-relaxed", "lwf", "icarl",
                            "icarl-jioc", "wa", "bic", "ssil", "dgr", "lucir", "lucir-bsce",
                            "lucir-bsce-relaxed", "podnet", "podnet-bsce", "podnet-bsce-relaxed", "der", "der-jioc",
                            "foster", "foster-jioc"}


def test_defaults_are_the_embedded_long_tailed_dgr_run():
    cfg = cfg_of()
    assert (cfg.method, cfg.data, cfg.imbalance, cfg.phases, cfg.memory_per_class) == ("dgr", "embedded", 10.0, 5, 20)


def test_preset_then_explicit_options_win():
    cfg = cfg_of("--preset", "cifar100-lt-lfh5", "--data-root", "/x")
    assert cfg.base_classes == 50 and cfg.phases == 6 and cfg.imbalance == 100.0 and cfg.lr_steps == (80, 120)
    assert cfg.epochs == 160
    short = cfg_of("--preset", "cifar100-lt-lfh5", "--data-root", "/x", "--epochs", "16")
    assert short.epochs == 16 and short.lr_steps == (8, 12)  # same fractions of the run
    assert cfg_of("--preset", "cifar100-lt-lfh5", "--data-root", "/x", "--epochs", "3").lr_steps == (2,)
    explicit = cfg_of("--preset", "cifar100-lt-lfh5", "--data-root", "/x", "--epochs", "16", "--lr-steps", "10")
    assert explicit.lr_steps == (10,)


def test_step_budget_presets_give_lucir_its_step_schedule_and_the_others_cosine():
    for name in ("glyphs100-lt-fair", "glyphs100-lt-ordered-fair", "glyphs100-lt-lfh5-fair", "fmnist-lt-5x2-m1000-fair"):
        for method in ("lucir", "lucir-bsce"):
            cfg = cfg_of("--preset", name, "--method", method, "--data-root", "/x")
            assert cfg.lr_schedule == "step" and cfg.lr_steps == (15, 22) and cfg.epochs == 30, (name, method)
        for method in ("podnet", "dgr", "finetune"):
            cfg = cfg_of("--preset", name, "--method", method, "--data-root", "/x")
            assert cfg.lr_schedule == "cosine" and not cfg.lr_steps, (name, method)


def test_memory_total_replaces_per_class_and_exemplar_free_methods_drop_memory():
    assert cfg_of("--memory-total", "500").memory_per_class is None
    cfg = cfg_of("--preset", "cifar10-lt-m1000", "--data-root", "/x", "--memory-per-class", "10")
    assert cfg.memory_total is None and cfg.memory_per_class == 10
    assert cfg_of("--method", "lwf").memory_per_class == 0


def test_every_preset_is_a_valid_configuration():
    for name in PRESETS:
        cfg = cfg_of("--preset", name, "--data-root", "/x")
        assert cfg.preset == name


def test_config_json_round_trip():
    cfg = cfg_of("--order", "3,1,2,0", "--increments", "2,2", "--lr-steps", "5,8", "--epochs", "10")
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--method", "nope"], ["--method", "dgr", "ssil"]),
        (["--imbalance", "0.5"], ["--imbalance", "0.5", "≥ 1"]),
        (["--method", "ssil", "--memory-per-class", "0"], ["ssil", "--memory-per-class"]),
        (["--method", "lwf", "--memory-per-class", "20"], ["lwf", "exemplar-free", "--memory-per-class"]),
        (["--memory-per-class", "5", "--memory-total", "50"], ["--memory-per-class", "--memory-total"]),
        (["--data", "cifar100"], ["--data-root"]),
        (["--profile", "linear"], ["--profile", "exp", "step"]),
        (["--lr-schedule", "step"], ["--lr-steps"]),
        (["--epochs", "0"], ["--epochs"]),
        (["--order", "sideways"], ["--order", "seed1993", "tail-first"]),
        (["--preset", "cifar100-lt-lfs10"], ["--data-root"]),
    ],
)
def test_bad_configurations_exit_2_naming_the_option(capsys, argv, names):
    code, err = run_main(capsys, *argv, "--out", "/nonexistent/never-written")
    assert code == 2, err
    assert err.startswith("cil-train: error:")
    for name in names:
        assert name in err, (name, err)
    assert "Traceback" not in err


def test_unknown_preset_is_refused_with_the_list(capsys):
    code, err = run_main(capsys, "--preset", "cifar1000")
    assert code == 2 and "--preset" in err and "cifar100-lt-lfs10" in err and "usage:" not in err


def test_resume_refuses_changed_options(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(RunConfig(out=str(tmp_path)).to_dict()))
    code, err = run_main(capsys, "--resume", str(tmp_path), "--epochs", "3")
    assert code == 2 and "--epochs" in err
    cfg = cfg_of("--resume", str(tmp_path), "--threads", "1")
    assert cfg.resume == str(tmp_path) and cfg.threads == 1


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    code, err = run_main(capsys, "--resume", str(tmp_path / "missing"))
    assert code == 2 and "config.json" in err


def test_validators_name_the_field_directly():
    with pytest.raises(ConfigError, match="--batch-size"):
        RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--channels-last"):
        RunConfig(channels_last="yes")


def test_amp_auto_that_resolves_to_float16_trains_dgr_in_float32(monkeypatch, tmp_path):
    """``--amp auto`` on a GPU without bf16 resolves to float16; DGR cannot train under loss scaling
    (``Method.no_fp16``), so the trainer takes float32 and says so; iCaRL keeps float16."""
    import torch

    from cil_train import loop

    monkeypatch.setattr(loop, "resolve_amp", lambda amp, device: torch.float16)
    said: list[str] = []
    dgr = loop.Trainer(RunConfig(method="dgr", epochs=1, phases=2), tmp_path / "dgr", log=said.append)
    assert dgr.amp_dtype is None and dgr.scaler is None
    assert any("float32, not float16, for dgr" in line for line in said)
    with pytest.warns(UserWarning, match="GradScaler"):  # float16 asks for a scaler, which needs CUDA
        icarl = loop.Trainer(RunConfig(method="icarl", epochs=1, phases=2), tmp_path / "icarl", log=lambda _m: None)
    assert icarl.amp_dtype == torch.float16


def test_the_amp_help_names_every_method_that_refuses_float16():
    import re

    from cil_train.methods import method_class

    text = " ".join(build_parser().format_help().split())
    start = text.index("mixed precision:")
    amp = text[start:text.index("(default", start)]
    named = set(re.findall(r"[a-z][a-z0-9-]*\*?", amp[amp.index("not for"):amp.index("whose")]))
    refusing = [m for m in methods() if method_class(m).no_fp16]
    assert refusing, "no method refuses float16: drop the list from the help"
    for name in refusing:
        assert name in named or any(n.endswith("*") and name.startswith(n[:-1]) for n in named), name
