"""Command line: ``cil-train [OPTIONS]`` trains; ``cil-train compare RUN...`` compares run folders.

The options are generated from :class:`~cil_train.config.RunConfig`, so ``--help`` always shows the
real defaults. Precedence: defaults < ``--preset`` < options given explicitly. Exit codes: 0 done,
2 bad configuration or data (one-paragraph message naming the option), 3 the loss diverged, 4 a file of the
run folder could not be written (disk full; the previous files are intact), 130 interrupted (the run can be
continued with ``--resume``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

import attrs

from cil_data import DataError
from cil_models import ModelConfigError

from . import __version__
from .config import RunConfig, check_config, config_fields
from .checkpoint import atomic_write_json, checkpoint_candidates, load_checkpoint
from .errors import ConfigError, RunWriteError, TrainingDiverged
from .methods import all_option_fields, method_class, methods
from .options import option_name
from .presets import PRESETS, preset_values
from .stages import scale_lr_steps

__all__ = ["build_parser", "config_from_args", "main"]

# options that may accompany --resume (they change where and how verbosely, not what is computed)
RESUME_RUNTIME_OPTIONS = ("device", "threads", "progress", "plots")
GROUP_TITLES = {
    "experiment": "experiment",
    "data": "data and protocol",
    "memory": "exemplar memory",
    "training": "training",
    "output": "output",
    "method": "method options (used by the methods named in brackets)",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=110)


def _parse_int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parse_order(text: str) -> str | tuple[int, ...]:
    return _parse_int_list(text) if text[:1].isdigit() else text


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "") else int(text)


def _epilog() -> str:
    methods_list = "\n".join(f"  {name:<14} {cls.summary}" + ("  [no memory]" if cls.memory == "none" else "")
                             for name, cls in methods().items())
    presets = "\n".join(f"  {name:<27} {p.description}" for name, p in PRESETS.items())
    return textwrap.dedent(
        """
        methods (--method):
        {methods}

        presets (--preset; explicit options override them):
        {presets}

        examples:
          cil-train                                   # DGR on the embedded Fashion-MNIST subset (a few minutes on a CPU)
          cil-train --method ssil --epochs 20
          cil-train --method dgr --preset cifar100-lt-lfs10 --data-root ~/data
          cil-train --resume runs/20261122-101500-dgr-embedded
          cil-train compare runs/*dgr* runs/*ssil* --out comparison
        """
    ).format(methods=methods_list, presets=presets).replace("\n        ", "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cil-train",
        description="Train a class-incremental learner phase by phase on a (long-tailed) data stream.\n"
        "Run folder: config.json, metrics.json/.csv, checkpoint.pt, memory/, PNG plots.",
        epilog=_epilog(),
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"cil-train {__version__}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in config_fields():
        group = groups.setdefault(f.metadata["group"], p.add_argument_group(GROUP_TITLES[f.metadata["group"]]))
        _add_option(group, f, f.metadata["help"])
    group = p.add_argument_group(GROUP_TITLES["method"])
    for name, users in all_option_fields().items():
        _, f = users[0]
        _add_option(group, f, f"{f.metadata['help']} [{', '.join(cls.name for cls, _ in users)}]")
    return p


def _add_option(group: argparse._ArgumentGroup, f: Any, help_text: str) -> None:
    """One option of an attrs field; its kind, choices and shown default come from the field's metadata."""
    meta = f.metadata
    default = meta.get("shown_default", f.default)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    kwargs: dict[str, Any] = {"dest": f.name, "default": None,
                              "help": f"{help_text} (default: {shown})".replace("%", "%%")}
    kind = meta.get("kind")
    if kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind == "int_list":
        kwargs.update(type=_parse_int_list, metavar="N,N,...")
    elif kind == "order":
        kwargs.update(type=_parse_order, metavar="ORDER")
    elif kind == "int":
        kwargs.update(type=_parse_optional_int if f.default is None or "shown_default" in meta else int, metavar="N")
    elif kind == "float":
        kwargs.update(type=float, metavar="X")
    else:
        # allowed values are shown here but checked by the options class, whose errors name the option
        choices = {"method": ["METHOD"], "preset": ["PRESET"]}.get(f.name, meta.get("choices"))
        kwargs["metavar"] = f.name.upper() if not choices else (
            "{" + ",".join(choices) + "}" if len(choices) > 1 else choices[0])
        if "flag_value" in meta:
            kwargs.update(nargs="?", const=meta["flag_value"])
    group.add_argument(option_name(f.name), **kwargs)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < preset < explicit options; memory and exemplar-free rules; validation."""
    shared_names = {f.name for f in config_fields()}
    given = {k: v for k, v in vars(args).items() if v is not None}
    explicit = {k: v for k, v in given.items() if k in shared_names}
    explicit_method = {k: v for k, v in given.items() if k not in shared_names}
    if "resume" in explicit:
        return _resume_config({**explicit, **explicit_method})
    values: dict[str, Any] = {}
    if "preset" in explicit:
        values.update(preset_values(explicit["preset"], explicit.get("method", RunConfig.__attrs_attrs__.method.default)))
    if "memory_per_class" in explicit and "memory_total" in explicit:
        raise ConfigError("--memory-per-class and --memory-total are exclusive: a memory is either growing "
                          "(N per class) or fixed (N in all). Give one of them.")
    if "memory_total" in explicit:
        values["memory_per_class"] = None
    if "memory_per_class" in explicit:
        values["memory_total"] = None
    if "epochs" in explicit and "lr_steps" not in explicit and values.get("lr_steps") and values.get("epochs"):
        values["lr_steps"] = scale_lr_steps(values["lr_steps"], values["epochs"], explicit["epochs"])
    values.update(explicit)
    cls = method_class(values.get("method", RunConfig.__attrs_attrs__.method.default))
    own = {f.name for f in attrs.fields(cls.Options)}
    foreign = sorted(set(explicit_method) - own)
    if foreign:
        users = all_option_fields()
        raise ConfigError(
            "; ".join(f"{option_name(n)} is an option of {', '.join(c.name for c, _ in users[n])}" for n in foreign)
            + f", not of --method {cls.name}" + (f" (its options: {', '.join(map(option_name, sorted(own)))})" if own
                                                  else " (it has no options of its own)") + ".")
    method_values = {k: v for k, v in values.items() if k not in shared_names and k in own}
    method_values.update(explicit_method)
    values = {k: v for k, v in values.items() if k in shared_names}
    if cls.memory == "none":
        named = [option_name(k) for k in ("memory_per_class", "memory_total") if explicit.get(k)]
        if named:
            raise ConfigError(f"--method {cls.name} is exemplar-free: it keeps no memory of old classes, so "
                              f"{' and '.join(named)} cannot be used with it. Remove the option, or choose a method "
                              f"with a memory ({', '.join(n for n, c in methods().items() if c.memory != 'none')}).")
        values["memory_per_class"], values["memory_total"] = 0, None
    cfg = RunConfig(**values, method_options=method_values)
    check_config(cfg)
    return cfg


def _resume_config(explicit: dict[str, Any]) -> RunConfig:
    folder = Path(explicit["resume"])
    saved = folder / "config.json"
    if not saved.is_file() and not any(p.is_file() for p in checkpoint_candidates(folder)):
        raise ConfigError(f"--resume {folder}: no config.json there; give the folder of an earlier run "
                          "(it holds config.json and checkpoint.pt).")
    others = sorted(set(explicit) - {"resume", *RESUME_RUNTIME_OPTIONS})
    if others:
        raise ConfigError(f"--resume continues a run with its saved configuration; {', '.join(map(option_name, others))} "
                          f"cannot be changed (only {', '.join(map(option_name, RESUME_RUNTIME_OPTIONS))} can).")
    values = _saved_config(folder)
    values.update({k: v for k, v in explicit.items() if k in RESUME_RUNTIME_OPTIONS})
    values["resume"] = str(folder)
    values["out"] = str(folder)
    return RunConfig.from_dict(values)


def _saved_config(folder: Path) -> dict[str, Any]:
    """The configuration of the run in ``folder``: ``config.json``, checked against the copy in its checkpoint
    (which carries a checksum). A missing or damaged ``config.json`` is replaced by that copy, with a warning."""
    saved = folder / "config.json"
    values: dict[str, Any] | None = None
    problem = ""
    try:
        values = json.loads(saved.read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        RunConfig.from_dict({**values, "out": str(folder)})
    except FileNotFoundError:
        values, problem = None, "is missing"
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ConfigError is a ValueError
        values, problem = None, f"is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    stored = None
    for path in checkpoint_candidates(folder):
        if path.is_file():
            try:
                stored = load_checkpoint(path).config
                break
            except ConfigError:
                continue
    if values is None:
        if stored is None:
            raise ConfigError(f"--resume {folder}: {saved} {problem}, and no readable checkpoint holds a copy of the "
                              "configuration. Restore config.json from a copy, or start the run again.")
        print(f"cil-train: warning: {saved} {problem}; using the copy of the configuration saved in the checkpoint",
              file=sys.stderr)
        atomic_write_json(saved, {k: v for k, v in stored.items() if k not in ("resume",)})
        return {k: v for k, v in stored.items() if k not in ("resume", "out")}
    if stored is not None:
        ignore = {"resume", "out", *RESUME_RUNTIME_OPTIONS}
        mine = RunConfig.from_dict({**values, "out": str(folder)}).to_dict()
        theirs = RunConfig.from_dict({**stored, "out": str(folder)}).to_dict()
        differ = [k for k in mine if k not in ignore and mine[k] != theirs.get(k)]
        if differ:
            shown = "; ".join(f"{option_name(k)}: {mine[k]!r} in config.json, {theirs.get(k)!r} in the checkpoint"
                              for k in differ[:4])
            raise ConfigError(f"--resume {folder}: config.json differs from the configuration saved in the checkpoint "
                              f"({shown}): it was edited or damaged. Restore it, or delete it to resume with the "
                              "checkpoint's configuration.")
    return values


def default_out_dir(cfg: RunConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = cfg.preset or cfg.data
    return Path("runs") / f"{stamp}-{cfg.method}-{tag}"


def _settle_imports() -> None:
    """Import what a run's first optimiser imports, with the garbage collector off, then freeze every object
    alive (``gc.freeze``). For a process of its own (:func:`console_main`): torch.optim imports
    ``torch._dynamo`` at its first optimiser (about a second, 135,000 objects), and each full collection of
    the run would traverse the modules' 320,000 long-lived objects again. Measured on the bench protocol's
    iCaRL run (the README's "Whole run"): 0.67 → 0.25 s in collections."""
    import torch

    gc.disable()
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    finally:
        gc.freeze()
        gc.enable()


def _train(argv: Sequence[str], own_process: bool = False) -> int:
    from .distributed import broadcast_object, init_distributed
    from .loop import Trainer
    from .runlock import RunLock

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if own_process:
        _settle_imports()
    info = init_distributed(cfg.device)
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    out = Path(broadcast_object(str(out), info))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder for the run.")
    created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if nothing gets written
    lock = RunLock(out)
    if info.is_main:
        try:
            lock.acquire()  # one writer per run folder; refused (exit 2) while another live process holds it
        except OSError as exc:
            raise ConfigError(f"--out {out}: the run folder cannot be created or locked ({exc.strerror or exc}).") \
                from exc
    try:
        return _train_locked(cfg, out, info, Trainer)
    except BaseException:
        lock.release()
        if created and info.is_main and out.is_dir() and [p.name for p in out.iterdir()] == ["run.lock"]:
            (out / "run.lock").unlink(missing_ok=True)  # nothing was written: leave no empty run folder behind
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise
    finally:
        lock.release()


def _train_locked(cfg: RunConfig, out: Path, info: Any, Trainer: Any) -> int:
    if not cfg.resume and any(p.exists() for p in checkpoint_candidates(out)):
        raise ConfigError(f"--out {out} already holds a run (checkpoint.pt); continue it with --resume {out} "
                          "or choose another --out.")
    cfg = cfg.replace(out=str(out))
    trainer = Trainer(cfg, out, info)
    if info.is_main:
        if not cfg.resume:
            atomic_write_json(out / "config.json", {k: v for k, v in cfg.to_dict().items() if k != "resume"})
        amp = str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "float32"
        print(
            f"cil-train {__version__}: method {cfg.method} on {trainer.dataset.name} "
            f"({trainer.scenario.num_classes} classes in {trainer.scenario.num_phases} phases, "
            f"{int(trainer.scenario.train_counts.sum())} training images, "
            f"ρ={cfg.imbalance:g}), {cfg.backbone}, {_budget(cfg)}, device {trainer.device} ({amp}"
            f"{', ' + str(info.world_size) + ' processes' if info.enabled else ''}), "
            f"{'compiled' if trainer.compiled else 'eager'} ({trainer.compile_reason}), run folder {out}",
            flush=True,
        )
    trainer.run()
    return 0


def _budget(cfg: RunConfig) -> str:
    """The training budget per phase: epochs, or the step budgets of --base-steps / --phase-steps."""
    base = f"{cfg.base_steps} steps" if cfg.base_steps else f"{cfg.base_epochs or cfg.epochs} epochs"
    rest = f"{cfg.phase_steps} steps" if cfg.phase_steps else f"{cfg.epochs} epochs"
    return f"{rest}/phase" if base == rest else f"{base} (base) + {rest}/phase"


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """``cil-train`` with ``argv`` (default: this process's arguments); the exit status. ``own_process``: the
    caller is the process's entry point and exits after it (:func:`console_main`); then the garbage collector
    is tuned for one run (:func:`_settle_imports`). Callers that go on (tests, notebooks) leave it off."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            from .compare import main as compare_main

            return compare_main(argv[1:])
        return _train(argv, own_process)
    except ConfigError as exc:
        print(textwrap.fill(f"cil-train: error: {exc}", width=100, break_on_hyphens=False, break_long_words=False), file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(textwrap.fill(f"cil-train: stopped: {exc}", width=100, break_on_hyphens=False, break_long_words=False), file=sys.stderr)
        return 3
    except (DataError, ModelConfigError) as exc:  # bad data or model settings found late: still our error
        print(textwrap.fill(f"cil-train: error: {exc}", width=100, break_on_hyphens=False, break_long_words=False), file=sys.stderr)
        return 2
    except RunWriteError as exc:
        print(textwrap.fill(f"cil-train: stopped: {exc}", width=100, break_on_hyphens=False, break_long_words=False), file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("\ncil-train: interrupted; continue with --resume RUN_FOLDER", file=sys.stderr)
        return 130


def console_main() -> int:
    """The ``cil-train`` command and ``python -m cil_train``: :func:`main` as the process's entry point. Before
    exiting it freezes what is left (``gc.freeze``), so the interpreter's teardown does not traverse the run's
    objects and the imported modules again: 1.0–1.2 → 0.30–0.35 s from the last output to the end of the process
    on the bench protocol's iCaRL run (atexit handlers and stream flushing run as usual)."""
    status = main(own_process=True)
    gc.freeze()
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(console_main())
