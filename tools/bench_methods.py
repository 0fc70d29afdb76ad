"""cil-train: training images/s of every method, relative to finetune and iCaRL; DER/FOSTER growth per phase.

    hatch run bench methods                       # every method, ResNet-32, batch 128, embedded data
    hatch run bench methods --per-class 40        # fewer images: a quicker, noisier run
    hatch run bench methods --methods finetune,icarl,der,foster --growth-phases 5 --json out.json

Part 1, every method of ``cil_train.methods.methods()``: a 2-phase run (5 + 5 classes of the embedded
Fashion-MNIST subset, ``--per-class`` training images per class, 20 exemplars per class where the method keeps
a memory, 2 epochs, batch 128, ResNet-32). The figure is the second phase's training throughput: every image of
every training step after the first epoch of each stage (``--warmup-epochs``) of that phase (all its stages:
boosting + compression, bias correction, balanced finetuning, ...; each extra stage gets ``--epochs`` epochs too)
divided by the time of those steps (forward, teacher, losses, backward, optimiser step), and the same for
the phase's first stage alone (its main training step: "step ÷ icarl" is that stage's time per image over
iCaRL's, the figure the cosine-family goals are stated in);
``phase_images_per_s`` in the JSON divides by the phase's ``train_seconds`` instead (its record in
metrics.json: also the data to the device, growing the network, per-stage set-up). finetune is measured first and last (its two figures show the drift of the
machine's load); ratios are against their mean, and against icarl.

Part 2, DER and FOSTER over ``--growth-phases`` phases (2 classes each): images/s and parameter count of the
network at the end of each phase (FOSTER: the deployed one-extractor student, and the two-extractor network of
boosting), so that DER's growing cost — one more frozen extractor forwarded per phase — is visible. Frozen
extractors are run one by one (``IncrementalNet.features``); ``tools/bench_models.py`` measured that running
them stacked under vmap gains nothing beyond the noise on a 2-core host, so the loop stays.

On a CPU the absolute numbers depend on the machine and its load: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import torch

import cil_data
from cil_train import loop
from cil_train.cli import main as train_main
from cil_train.methods import methods
from cil_train.options import option_name


def make_npz(folder: Path, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """The embedded data cut to ``per_class`` training and ``test_per_class`` test images per class."""
    ds = cil_data.load_embedded()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(ds.num_classes):
        pool = np.flatnonzero(ds.train_labels.numpy() == c)
        train += list(rng.choice(pool, min(per_class, len(pool)), replace=False))
        pool = np.flatnonzero(ds.test_labels.numpy() == c)
        test += list(rng.choice(pool, min(test_per_class, len(pool)), replace=False))
    path = folder / "bench.npz"
    np.savez(path, x_train=ds.train_images[train, 0].numpy(), y_train=ds.train_labels[train].numpy(),
             x_test=ds.test_images[test, 0].numpy(), y_test=ds.test_labels[test].numpy(),
             classes=np.array(ds.class_names))
    return path


class ImageCounter:
    """Counts the images and times the training steps (forward, losses, backward, optimiser step, the method's
    after-step hook) per phase, by wrapping ``Trainer._train_step``."""

    def __init__(self, skip_epochs: int) -> None:
        self.skip_epochs = skip_epochs
        self.per_phase: dict[int, int] = {}
        self.seconds: dict[int, float] = {}
        self.per_stage: dict[int, dict[str, list[float]]] = {}  # phase -> stage name -> [images, seconds]
        self._original = loop.Trainer._train_step

    def __enter__(self) -> "ImageCounter":
        counter, original = self, self._original

        def counted(trainer, ctx, pos, *args, **kwargs):
            if ctx.epoch < counter.skip_epochs:  # warm-up epochs of each stage: not timed
                return original(trainer, ctx, pos, *args, **kwargs)
            start = time.perf_counter()
            out = original(trainer, ctx, pos, *args, **kwargs)
            out[0].detach().item()  # the step is finished (no-op on the CPU, a sync on accelerators)
            counter.seconds[ctx.t] = counter.seconds.get(ctx.t, 0.0) + time.perf_counter() - start
            counter.per_phase[ctx.t] = counter.per_phase.get(ctx.t, 0) + len(pos)
            here = counter.per_stage.setdefault(ctx.t, {}).setdefault(ctx.stage.name, [0, 0.0])
            here[0] += len(pos)
            here[1] += time.perf_counter() - start
            return out

        loop.Trainer._train_step = counted
        return self

    def __exit__(self, *exc) -> None:
        loop.Trainer._train_step = self._original


# options of methods' extra stages (finetuning, bias correction, classifier learning) whose defaults are tens of
# epochs: the benchmark gives them --epochs too, so that every stage is timed and the default run stays short
EXTRA_STAGE_EPOCHS = {"podnet_finetune_epochs", "bic_bias_epochs", "der_balanced_epochs", "lucir_cbf_epochs",
                      "il_finetune_epochs", "foster_compression_epochs"}


def extra_stage_options(name: str, epochs: int) -> list[str]:
    """``--<stage>-epochs EPOCHS`` for each extra stage ``name`` runs with its defaults (extra stages as long as
    the main one: the default run stays short); not for stages it does not run (DER's classifier stage without
    ``--der-bias-correction balanced``, podnet-bsce's finetuning...), whose options would be an error."""
    method = methods()[name]
    own = {f.name for f in attrs.fields(method.Options)}
    extra = {option: epochs for option in EXTRA_STAGE_EPOCHS & own}
    argv: list[str] = []
    for option in sorted(extra.keys() - method.ignored_options(method.Options(**extra)).keys()):
        argv += [option_name(option), str(epochs)]
    return argv


def _first_stage(row: dict) -> float:
    """Images/s of the phase's first stage (the main training stage; later ones: finetuning, compression...)."""
    stages = list(row["stages"].values())
    return stages[0]["images_per_s"] if stages else row["images_per_s"]


def run_method(name: str, npz: Path, out: Path, args: argparse.Namespace, phases: int) -> list[dict]:
    """One run of ``name``; per phase: images, train seconds, images/s and the method's figures."""
    argv = ["--method", name, "--data", "npz", "--data-root", str(npz), "--backbone", args.backbone,
            "--phases", str(phases), "--imbalance", "1", "--epochs", str(args.epochs), "--batch-size",
            str(args.batch_size), "--progress", "none", "--no-plots", "--seed", "1", "--out", str(out),
            "--threads", str(args.threads), "--checkpoint-every", "0", "--amp", args.amp]
    if methods()[name].memory != "none":
        argv += ["--memory-per-class", "20"]
    argv += extra_stage_options(name, args.epochs)
    with ImageCounter(args.warmup_epochs) as counter:
        code = train_main(argv)
    if code != 0:
        raise SystemExit(f"{name}: the run exited with code {code}")
    records = json.loads((out / "metrics.json").read_text())["phases"]
    rows = []
    for t, rec in enumerate(records):
        images, steps = counter.per_phase.get(t, 0), counter.seconds.get(t, 0.0)
        rows.append({"phase": t + 1, "images": images, "step_seconds": steps, "train_seconds": rec["train_seconds"],
                     "images_per_s": images / steps if steps > 0 else None,
                     "phase_images_per_s": images / rec["train_seconds"] if rec["train_seconds"] > 0 else None,
                     "stages": {stage: {"images": n, "seconds": sec, "images_per_s": n / sec if sec > 0 else None}
                                for stage, (n, sec) in counter.per_stage.get(t, {}).items()},
                     **{k: rec[k] for k in ("parameters", "teacher_parameters", "extractors") if k in rec}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    parser.add_argument("--per-class", type=int, default=50, help="training images per class (default 50)")
    parser.add_argument("--test-per-class", type=int, default=10, help="test images per class (default 10)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="first epochs of every stage left out of the timing (kernel set-up; default 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="--amp of the runs (auto: bf16 autocast where the CPU has fast bf16)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--growth-phases", type=int, default=5, choices=(0, 2, 5, 10),
                        help="phases of the DER/FOSTER growth runs (a divisor of the 10 classes; 0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args(argv)

    registered = list(methods())
    chosen = registered if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(registered))
    if unknown:
        parser.error(f"unknown methods {', '.join(unknown)}; choose among {', '.join(registered)}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    figures: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                                 "torch": torch.__version__},
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "phase2": {}, "growth": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz = make_npz(tmp, args.per_class, args.test_per_class)
        order = (["finetune"] if "finetune" in chosen else []) + [m for m in chosen if m != "finetune"]
        if "finetune" in chosen and len(chosen) > 1:
            order.append("finetune")  # measured again last: the drift of the load
        ref_runs = []
        print(f"phase 2 of 2 (5 new classes, {args.per_class} images each + memory), {args.backbone}, "
              f"batch {args.batch_size}, {args.epochs} epoch(s), {args.threads} threads")
        for k, name in enumerate(order):
            rows = run_method(name, npz, tmp / f"{k:02d}-{name}", args, phases=2)
            row = rows[1]
            if name == "finetune":
                ref_runs.append(row["images_per_s"])
            figures["phase2"].setdefault(name, []).append(row)
            stages = ", ".join(f"{stage} {v['images_per_s']:.1f}" for stage, v in row["stages"].items()
                               if v["images_per_s"])
            print(f"  {name:<20} {row['images']:>6} images {row['step_seconds']:>7.2f} s "
                  f"{row['images_per_s']:>8.1f} images/s ({stages})", flush=True)
        finetune = sum(ref_runs) / len(ref_runs) if ref_runs else None
        icarl = figures["phase2"]["icarl"][0]["images_per_s"] if "icarl" in figures["phase2"] else None
        icarl_first = _first_stage(figures["phase2"]["icarl"][0]) if "icarl" in figures["phase2"] else None
        print(f"\n{'method':<20} {'images/s':>9} {'÷ finetune':>11} {'÷ icarl':>8}   "
              f"{'1st stage':>9} {'step ÷ icarl':>12}")
        for name in chosen:
            runs = figures["phase2"][name]
            ips = sum(r["images_per_s"] for r in runs) / len(runs)
            first = sum(_first_stage(r) for r in runs) / len(runs)
            rel_f = ips / finetune if finetune else None
            rel_i = ips / icarl if icarl else None
            step = icarl_first / first if icarl_first else None  # the first stage's step time over iCaRL's
            figures["phase2"][name] = {"runs": runs, "images_per_s": ips, "vs_finetune": rel_f, "vs_icarl": rel_i,
                                       "first_stage_images_per_s": first, "first_stage_step_vs_icarl": step}
            print(f"{name:<20} {ips:>9.1f} {rel_f if rel_f else float('nan'):>11.3f} "
                  f"{rel_i if rel_i else float('nan'):>8.3f}   {first:>9.1f} {step if step else float('nan'):>12.3f}")
        if ref_runs:
            print(f"(finetune measured {len(ref_runs)}×: {', '.join(f'{v:.1f}' for v in ref_runs)} images/s)")

        growth = [m for m in ("der", "foster") if m in chosen] if args.growth_phases > 0 else []
        for name in growth:
            rows = run_method(name, npz, tmp / f"growth-{name}", args, phases=args.growth_phases)
            figures["growth"][name] = rows
            print(f"\n{name}: {args.growth_phases} phases of {10 // args.growth_phases} classes")
            print(f"{'phase':>5} {'images':>7} {'seconds':>8} {'images/s':>9} {'parameters':>11}"
                  + (f" {'boosting net':>13}" if name == "foster" else f" {'extractors':>10}"))
            for r in rows:
                extra = (f" {int(r['teacher_parameters']):>13,}" if "teacher_parameters" in r else f" {'':>13}") \
                    if name == "foster" else f" {int(r.get('extractors', 0)):>10}"
                print(f"{r['phase']:>5} {r['images']:>7} {r['step_seconds']:>8.2f} {r['images_per_s']:>9.1f} "
                      f"{int(r['parameters']):>11,}" + extra)
    figures["seconds"] = time.perf_counter() - started
    print(f"\n{figures['seconds']:.0f} s in all")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
