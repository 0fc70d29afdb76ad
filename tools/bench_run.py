"""Whole-run time: one complete cil-train run per method, phase by phase, split into where the time goes.

Each method runs the same fixed protocol (default: the embedded Fashion-MNIST subset as 10 phases of one
class, ResNet-32, batch 128, 20 exemplars per class, one epoch per phase) through the real ``Trainer``; the
loop's steps are timed by wrapping them from outside (nothing in cil-train is changed for the benchmark):

* **train** — optimiser steps (forward, loss, backward, step) minus the teacher's part;
* **teacher** — forwards of the previous phase's network (``teacher_logits``, and ``features`` /
  ``stage_features`` calls on the teacher);
* **eval** — evaluation of the phase (CNN and, where the method reports it, NME);
* **memory** — the memory update (feature extraction for herding, herding, the HDF5 write);
* **checkpoint** — checkpoint and ``metrics.json`` writes; **other** — the rest of the phase (data on the
  device, network growth, imprinting, ...).

Outside the phases: **setup** (the ``Trainer``: data, scenario, method), **reports** (``metrics.json``,
``metrics.csv`` and, with ``--plots``, the four PNG plots cil-train writes by default) and the rest (the network,
the final metrics). The process's start and imports (about 3 s: torch, and ``torch._dynamo``, which
``torch.optim`` imports) are not in these figures.

Training images/s of every phase are printed beside the plain reference loop of ``bench loop`` (DataLoader +
per-image transforms, fp32) measured in the same run on the same images; phases with a teacher are compared with
the reference loop plus a teacher (a frozen copy forwarded under ``no_grad`` and a KD term, as PyCIL's iCaRL).

    hatch run bench run                                   # icarl and dgr, 10 phases of the embedded data
    hatch run bench run --methods icarl,dgr,lucir --json bench-results/run.json
    hatch run bench run --methods icarl --compile off,on        # the whole run eager and compiled
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

import cil_data
from cil_train import RunConfig
from cil_train import loop as L
from cil_train.context import PhaseContext

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_loop  # noqa: E402  (the reference loop and the data subset)
PARTS = ("train", "teacher", "eval", "memory", "checkpoint", "other")


class Timers:
    """Seconds per part of the current phase (nested parts are not double counted: teacher time spent inside
    a training step is moved from train to teacher). ``sync`` runs as a part starts and ends: on a GPU it waits
    for the queued kernels, so each part holds its own GPU time (which also drains the queue at each part's
    edges: a timed GPU run is a little slower than a plain one, whose wall time ``bench revisions`` gives)."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.phases: list[dict[str, float]] = []
        self._open: set[str] = set()
        self.sync = sync

    @contextlib.contextmanager
    def part(self, name: str):
        if name in self._open:  # a timed call inside one of the same part (teacher_logits → teacher.features)
            yield
            return
        self._open.add(name)
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self._open.discard(name)
            self.current[name] += time.perf_counter() - start


def _wrap(timers: Timers, name: str, fn):
    def timed(*args, **kwargs):
        with timers.part(name):
            return fn(*args, **kwargs)

    timed.__wrapped__ = fn
    return timed


def instrument(stack: contextlib.ExitStack, timers: Timers) -> None:
    """Wrap the loop's steps with timers for as long as ``stack`` is open."""
    patches = [
        (L.Trainer, "_train_step", "train"), (L.Trainer, "_update_memory", "memory"), (L.Trainer, "_save", "checkpoint"),
        (L, "evaluate_phase", "eval"), (L, "atomic_write_json", "checkpoint"), (PhaseContext, "teacher_logits", "teacher"),
    ]
    for owner, attr, part in patches:
        original = getattr(owner, attr)
        setattr(owner, attr, _wrap(timers, part, original))
        stack.callback(setattr, owner, attr, original)
    run_phase = L.Trainer._run_phase

    def timed_phase(self, *args, **kwargs):
        timers.current = defaultdict(float)
        timers.sync()
        start = time.perf_counter()
        try:
            return run_phase(self, *args, **kwargs)
        finally:
            timers.sync()
            phase = dict(timers.current)
            phase["total"] = time.perf_counter() - start
            phase["train"] = phase.get("train", 0.0) - phase.get("teacher", 0.0)
            phase["other"] = phase["total"] - sum(phase.get(p, 0.0) for p in PARTS if p != "other")
            timers.phases.append(phase)

    L.Trainer._run_phase = timed_phase
    stack.callback(setattr, L.Trainer, "_run_phase", run_phase)


def _time_teacher_calls(stack: contextlib.ExitStack, timers: Timers) -> None:
    """The network of ``PhaseContext.frozen_teacher`` (the teacher, or its copy with folded batch norms) also
    times its ``features`` / ``stage_features`` calls (LUCIR, PODNet)."""
    original = PhaseContext.frozen_teacher

    def frozen_teacher(self):
        teacher = original(self)
        if not getattr(teacher, "_bench_timed", False):
            for attr in ("features", "stage_features"):
                if hasattr(teacher, attr):
                    setattr(teacher, attr, _wrap(timers, "teacher", getattr(teacher, attr)))
            teacher._bench_timed = True
        return teacher

    PhaseContext.frozen_teacher = frozen_teacher
    stack.callback(setattr, PhaseContext, "frozen_teacher", original)


def run_method(method: str, npz: Path, args: argparse.Namespace, out: Path, compile_mode: str = "auto",
               fold: bool = True) -> dict:
    device = bench_loop.bench_device(args.device)
    timers = Timers(sync=lambda: bench_loop.synchronize(device))
    cfg = RunConfig(method=method, data="npz", data_root=str(npz), imbalance=1.0, phases=args.phases,
                    memory_per_class=20, backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size,
                    seed=args.seed, plots=args.plots, progress="none", out=str(out), device=args.device,
                    compile=compile_mode, fold_bn=fold)
    outside = Timers()  # run-level parts outside the phases
    with contextlib.ExitStack() as stack:
        instrument(stack, timers)
        _time_teacher_calls(stack, timers)
        original = L.write_reports
        L.write_reports = _wrap(outside, "reports", original)
        stack.callback(setattr, L, "write_reports", original)
        start = time.perf_counter()
        with outside.part("setup"):
            trainer = L.Trainer(cfg, out, log=lambda _m: None)
        started = time.perf_counter()
        result = trainer.run()
        wall = time.perf_counter() - start
    outside.current["rest"] = (time.perf_counter() - started - sum(t["total"] for t in timers.phases)
                               - outside.current["reports"])
    phases = []
    for rec, t in zip(trainer.records, timers.phases):
        images = rec["train_images"] + rec["exemplars"]
        step_time = t.get("train", 0.0) + t.get("teacher", 0.0)
        phases.append({"phase": rec["phase"], "images": images, "epochs": len(rec["epoch_losses"]),
                       "img_per_s": images * len(rec["epoch_losses"]) / step_time if step_time else None,
                       **{p: t.get(p, 0.0) for p in PARTS}, "total": t["total"]})
    return {"method": method, "compile": compile_mode, "compiled": trainer.compiled, "fold_bn": fold,
            "wall_s": wall, "outside_phases": dict(outside.current),
            "avg_inc_acc": result["avg_inc_acc"], "phases": phases}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="icarl,dgr", help="comma-separated methods (default icarl,dgr)")
    p.add_argument("--npz", type=Path, help="an npz instead of the embedded data (e.g. ../shared/data/glyphs100.npz)")
    p.add_argument("--images", type=int, default=6000, help="training images taken from the data (default 6000)")
    p.add_argument("--phases", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--compile", default="auto",
                   help="--compile of the runs: auto, on, off, or several (e.g. off,on: each method once per mode, "
                        "compilation included in the compiled run's time)")
    p.add_argument("--fold-bn", default="on",
                   help="--fold-bn of the runs (eager ones): on, off, or both (off,on: each method once per setting)")
    p.add_argument("--plots", action="store_true", help="write the run's plots as cil-train does by default "
                   "(off: the reports are the metrics files only)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 600 images, 2 phases, ResNet-8")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.phases, args.backbone = 600, 2, "resnet8"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_loop.bench_device(args.device)
    ds_full = cil_data.load_npz(args.npz) if args.npz else cil_data.load_embedded()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz = bench_loop._subset_npz(ds_full, min(args.images, len(ds_full.train_labels)), tmp)
        ds = cil_data.load_npz(npz)
        ref = bench_loop.reference_loop(ds, args.backbone, args.epochs, args.batch_size, args.workers, args.seed,
                                        device=device)
        ref_teacher = bench_loop.reference_loop(ds, args.backbone, args.epochs, args.batch_size, args.workers,
                                                args.seed, teacher=True, device=device)
        modes = args.compile.split(",")
        folds = [{"on": True, "off": False}[f] for f in args.fold_bn.split(",")]
        runs = [run_method(m, npz, args, tmp / f"{m}-{mode}-{'fold' if fold else 'bn'}", mode, fold)
                for m in args.methods.split(",") for mode in modes for fold in folds]
    print(f"whole run: {args.phases} phases of {ds_full.name} ({args.images} training images), {args.backbone}, "
          f"batch {args.batch_size}, {args.epochs} epoch(s) per phase, {torch.get_num_threads()} threads, "
          f"{bench_loop.device_name(device)}; reference loop {ref['img_per_s']:.0f} img/s, "
          f"with a teacher {ref_teacher['img_per_s']:.0f} img/s (phases with a teacher are compared with it)")
    for run in runs:
        fold = "" if run["compiled"] else f", --fold-bn {'on' if run['fold_bn'] else 'off'}"
        print(f"\n{run['method']} ({'compiled' if run['compiled'] else 'eager'}, --compile {run['compile']}{fold}): "
              f"{run['wall_s']:.1f} s in all, avg. inc. acc {run['avg_inc_acc']:.2f}")
        print("| phase | images | train s | teacher s | eval s | memory s | checkpoint s | other s | img/s | × reference |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for ph in run["phases"]:
            base = ref_teacher if ph["teacher"] > 0 else ref
            ratio = ph["img_per_s"] / base["img_per_s"] if ph["img_per_s"] else None
            ph["ratio_to_reference"] = ratio
            print(f"| {ph['phase']} | {ph['images']} | " + " | ".join(f"{ph[p]:.2f}" for p in PARTS)
                  + f" | {ph['img_per_s']:.0f} | {ratio:.2f}× |")
        totals = {p: sum(ph[p] for ph in run["phases"]) for p in PARTS}
        run["totals"] = totals
        print("| all | | " + " | ".join(f"{totals[p]:.2f}" for p in PARTS) + " | | |")
        with_teacher = [ph["ratio_to_reference"] for ph in run["phases"]
                        if ph["teacher"] > 0 and ph["ratio_to_reference"] is not None]
        run["mean_ratio_with_teacher"] = sum(with_teacher) / len(with_teacher) if with_teacher else None
        o = run["outside_phases"]
        print(f"outside the phases: setup (data, scenario, method) {o['setup']:.2f} s, reports (metrics files and "
              f"plots) {o['reports']:.2f} s, the rest (network, final metrics) {o['rest']:.2f} s")
        if with_teacher:
            print(f"phases with a teacher: {run['mean_ratio_with_teacher']:.2f}× the reference loop with a teacher "
                  f"(mean of {len(with_teacher)} phases, {min(with_teacher):.2f}–{max(with_teacher):.2f}×)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "run", "reference": ref, "reference_with_teacher": ref_teacher,
                                         "runs": runs, "phases": args.phases,
                                         "epochs": args.epochs, "backbone": args.backbone, "images": args.images,
                                         "threads": torch.get_num_threads(), "device": str(device),
                                         "device_name": bench_loop.device_name(device), "torch": torch.__version__,
                                         "python": sys.version.split()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
