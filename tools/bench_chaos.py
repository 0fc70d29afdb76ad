"""Crash at any moment: SIGKILL a small run at random points of training steps, checkpoint writes, memory writes and plotting (and at random times), resume each, compare with an uninterrupted run.

``hatch run bench chaos [--kills 24] [--seed 0] [--method dgr] [--json PATH]``

1. An uninterrupted reference run (6 Fashion-MNIST classes of the embedded data, 40 training images each,
   ρ = 4, 3 phases, ResNet-8, 2 epochs, memory 5 per class, plots on, one thread) counts its training
   steps, checkpoint writes, memory writes and plot files.
2. Each kill point is drawn at random: a category, which occurrence of it (e.g. the 17th training step,
   the 4th checkpoint write) and where inside it — for a file write: after the previous checkpoint was
   linked aside, with the new file half written, written but not yet renamed, or just renamed; for a
   step: before or after it; for a plot: before, half written, after. The run is started in a fresh
   folder and SIGKILLs *itself* at that point (``os.kill(os.getpid(), SIGKILL)``: the same state on disk as
   a kill from outside at that instant, but landing exactly inside the short file writes). "timed" kill
   points are sent from outside at a random time between the run folder's creation (config.json) and the
   end of the reference run.
3. ``cil-train --resume`` continues each killed run to its end; its ``metrics.json`` must equal the
   reference's (wall-clock fields aside), and the run folder must hold no temporary files.

Exit code 0 when every kill point passed; the table lists each one (category, occurrence, position, how
far the run had come, result).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
CATEGORIES = {  # category -> positions inside one occurrence
    "step": ("before", "after"),
    "checkpoint": ("linked-aside", "half-written", "before-rename", "after-rename"),
    "memory": ("half-written", "before-rename", "after-rename"),
    "plot": ("before", "half-written", "after"),
}
SHARE = {"step": 0.3, "checkpoint": 0.25, "memory": 0.15, "plot": 0.15, "timed": 0.15}


# ---------------------------------------------------------------------------------------------------
# the child: a cil-train run with counting hooks that can SIGKILL the process at one chosen point
# ---------------------------------------------------------------------------------------------------
def _child(spec: dict[str, Any], argv: list[str]) -> int:
    import h5py

    import cil_data.atomic as atomic
    import cil_train.checkpoint as checkpoint
    from cil_train import loop, report
    from cil_train.cli import main

    counts = {k: 0 for k in CATEGORIES}
    target = spec.get("kill")  # {"category", "n", "position"} or None (count only)
    current: dict[str, Any] = {"write": None}  # the category of the file write in progress

    def hit(category: str, position: str) -> None:
        if target and target["category"] == category and target["n"] == counts[category] \
                and target["position"] == position:
            os.kill(os.getpid(), signal.SIGKILL)

    def category_of(path: Any) -> str | None:
        name = Path(str(path)).name
        if name.startswith("checkpoint.pt"):
            return "checkpoint"
        if name.endswith(".h5") or ".h5.tmp-" in name:
            return "memory"
        if ".png" in name:
            return "plot"
        return None

    real_step = loop.Trainer._train_step

    def step(self, *args, **kwargs):
        counts["step"] += 1
        hit("step", "before")
        out = real_step(self, *args, **kwargs)
        hit("step", "after")
        return out

    loop.Trainer._train_step = step

    real_save = checkpoint.save_checkpoint

    def save_checkpoint(path, ckpt):
        counts["checkpoint"] += 1
        current["write"] = "checkpoint"
        try:
            real_save(path, ckpt)
        finally:
            current["write"] = None

    loop.save_checkpoint = save_checkpoint

    real_memory_save = loop.ExemplarMemory.save

    def memory_save(self, path):
        counts["memory"] += 1
        real_memory_save(self, path)

    loop.ExemplarMemory.save = memory_save

    real_figure = report._save_figure

    def save_figure(fig, path):
        counts["plot"] += 1
        hit("plot", "before")
        real_figure(fig, path)
        hit("plot", "after")

    report._save_figure = save_figure

    class _OS:  # os for cil_data.atomic and cil_train.checkpoint, with a hook around os.replace
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if Path(str(dst)).name == "checkpoint.prev.pt":  # the replaced checkpoint kept aside
                os.replace(src, dst)
                hit("checkpoint", "linked-aside")
                return
            cat = category_of(dst)
            if cat:
                hit(cat, "before-rename")
            os.replace(src, dst)
            if cat:
                hit(cat, "after-rename")

    atomic.os = _OS()
    checkpoint.os = _OS()

    real_open = open

    class _Half:
        def __init__(self, fh, cat):
            self.fh, self.cat = fh, cat

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            hit(self.cat, "half-written")
            return self.fh.write(data[len(data) // 2:])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def patched_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        cat = category_of(path)
        return _Half(fh, cat) if cat and "w" in mode else fh

    atomic.open = patched_open

    real_create = h5py.Group.create_dataset
    created = {"n": 0}

    def create_dataset(self, name, *args, **kwargs):
        out = real_create(self, name, *args, **kwargs)
        created["n"] += 1
        if created["n"] % 2 == 0:  # after the second array of the file: half written
            self.file.flush()
            hit("memory", "half-written")
        return out

    h5py.Group.create_dataset = create_dataset

    code = main(argv)
    if spec.get("counts"):
        Path(spec["counts"]).write_text(json.dumps(counts))
    return code


# ---------------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------------
def _tiny_npz(path: Path) -> Path:
    import numpy as np

    import cil_data

    ds = cil_data.load_embedded()
    g = np.random.default_rng(0)
    keep_tr, keep_te = [], []
    for c in range(6):
        keep_tr += list(g.choice(np.flatnonzero(ds.train_labels.numpy() == c), 40, replace=False))
        keep_te += list(g.choice(np.flatnonzero(ds.test_labels.numpy() == c), 10, replace=False))
    np.savez(path, x_train=ds.train_images[keep_tr, 0].numpy(), y_train=ds.train_labels[keep_tr].numpy(),
             x_test=ds.test_images[keep_te, 0].numpy(), y_test=ds.test_labels[keep_te].numpy(),
             classes=np.array(ds.class_names[:6]))
    return path


def _run_args(npz: Path, out: Path, method: str, epochs: int) -> list[str]:
    return ["--data", "npz", "--data-root", str(npz), "--method", method, "--backbone", "resnet8", "--epochs",
            str(epochs), "--phases", "3", "--imbalance", "4", "--memory-per-class", "5", "--batch-size", "32",
            "--eval-batch-size", "128", "--threads", "1", "--progress", "none", "--plots", "--seed", "7",
            "--out", str(out)]


def _child_cmd(spec: dict[str, Any], argv: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec), "--", *argv]


def _without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if k not in ("wall_seconds", "phase_seconds", "seconds", "train_seconds")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _progress(folder: Path) -> str:
    """How far a killed run had come, from its metrics.json and checkpoint."""
    try:
        done = len(json.loads((folder / "metrics.json").read_text())["phases"])
    except Exception:
        done = 0
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return f"{done} phase(s) recorded; {', '.join(f for f in files if f != 'memory')}"


def _wait_for_run_folder(proc: subprocess.Popen, folder: Path) -> float:
    """Seconds until the run wrote its config.json (imports and data loading before it are not the run)."""
    start = time.perf_counter()
    while not (folder / "config.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    return time.perf_counter() - start


def _draw(rng: random.Random, counts: dict[str, int], kills: int, duration: float) -> list[dict[str, Any]]:
    per = {k: max(1, round(share * kills)) for k, share in SHARE.items()}
    while sum(per.values()) > kills:
        per[max(per, key=per.get)] -= 1
    while sum(per.values()) < kills:
        per["step"] += 1
    points = []
    for cat, n in per.items():
        for i in range(n):
            if cat == "timed":
                points.append({"category": "timed", "at": round(rng.uniform(0.0, 0.97) * duration, 2)})
                continue
            positions = CATEGORIES[cat]
            points.append({"category": cat, "n": rng.randint(1, counts[cat]), "position": positions[i % len(positions)]})
    return points


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        spec = json.loads(argv[1])
        return _child(spec, argv[3:])
    p = argparse.ArgumentParser(prog="bench chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=24, help="number of kill points (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawing of kill points")
    p.add_argument("--method", default="dgr", help="method of the run (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per phase (default: %(default)s)")
    p.add_argument("--work", help="folder for the runs (default: a temporary folder, removed at the end)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cil-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    npz = _tiny_npz(work / "tiny.npz")
    ref = work / "reference"
    started = time.perf_counter()
    proc = subprocess.Popen(_child_cmd({"counts": str(work / "counts.json")}, _run_args(npz, ref, args.method,
                                                                                     args.epochs)),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    setup = _wait_for_run_folder(proc, ref)
    out, err = proc.communicate()
    duration = time.perf_counter() - started - setup  # from the run folder's creation to the end
    if proc.returncode != 0:
        print(out[-2000:], err[-2000:], file=sys.stderr)
        return 1
    counts = json.loads((work / "counts.json").read_text())
    want = _without_timings(json.loads((ref / "metrics.json").read_text()))
    print(f"reference run: {duration:.1f} s after {setup:.1f} s of start-up, {counts['step']} training steps, {counts['checkpoint']} checkpoint "
          f"writes, {counts['memory']} memory writes, {counts['plot']} plot files (method {args.method}, "
          f"{args.epochs} epochs x 3 phases)")
    rng = random.Random(args.seed)
    points = _draw(rng, counts, args.kills, duration)
    results = []
    print("| # | kill point | killed | state when killed | resumed | metrics equal |")
    print("|---:|---|---|---|---|---|")
    for i, point in enumerate(points, 1):
        folder = work / f"kill-{i:02d}"
        run_argv = _run_args(npz, folder, args.method, args.epochs)
        if point["category"] == "timed":
            proc = subprocess.Popen(_child_cmd({}, run_argv), env=ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            _wait_for_run_folder(proc, folder)  # then `at` seconds into the run
            try:
                proc.wait(timeout=point["at"])
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
            rc = proc.returncode
            label = f"timed, {point['at']:.1f} s into the run"
        else:
            killed = subprocess.run(_child_cmd({"kill": point}, run_argv), env=ENV, capture_output=True, text=True)
            rc, stderr = killed.returncode, killed.stderr
            label = f"{point['category']} #{point['n']} {point['position']}"
        was_killed = rc == -signal.SIGKILL
        state = _progress(folder)
        resumed = subprocess.run([sys.executable, "-m", "cil_train", "--resume", str(folder), "--progress", "none"],
                                 env=ENV, capture_output=True, text=True)
        equal = False
        if resumed.returncode == 0:
            got = _without_timings(json.loads((folder / "metrics.json").read_text()))
            leftovers = list(folder.glob("*.tmp-*")) + list((folder / "memory").glob("*.tmp-*"))
            equal = got == want and not leftovers
        fell_back = "previous checkpoint" in resumed.stdout
        ok = was_killed and resumed.returncode == 0 and equal
        results.append({"point": point, "label": label, "killed": was_killed, "returncode": rc, "state": state,
                        "resume_returncode": resumed.returncode, "fell_back": fell_back, "equal": equal, "ok": ok,
                        "resume_stderr": resumed.stderr[-800:] if resumed.returncode else "",
                        "stderr": stderr[-800:] if not was_killed else ""})
        print(f"| {i} | {label} | {'yes' if was_killed else f'no (exit {rc})'} | {state} | "
              f"{'exit 0' + (' (previous checkpoint)' if fell_back else '') if resumed.returncode == 0 else 'exit ' + str(resumed.returncode)} | "
              f"{'yes' if equal else 'NO'} |", flush=True)
        if resumed.returncode != 0:
            print("    " + resumed.stderr.strip().replace("\n", "\n    ")[-1500:], flush=True)
    passed = sum(r["ok"] for r in results)
    by_cat: dict[str, list[int]] = {}
    for r in results:
        by_cat.setdefault(r["point"]["category"], []).append(int(r["ok"]))
    summary = ", ".join(f"{cat} {sum(v)}/{len(v)}" for cat, v in by_cat.items())
    print(f"{passed} of {len(results)} kill points passed ({summary}); reference {duration:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"counts": counts, "reference_seconds": duration, "method": args.method,
                                               "epochs": args.epochs, "seed": args.seed, "results": results},
                                              indent=2))
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
