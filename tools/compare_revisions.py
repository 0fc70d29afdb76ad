"""Same seed, two git revisions: does every method still give the same metrics?

Checks out ``REV_A`` and ``REV_B`` into temporary git worktrees and runs each method variant on the embedded data
with the packages of each revision (``PYTHONPATH`` points at their ``src`` folders; one thread, so the runs are
deterministic), then compares every ``metrics.json`` without its timings and prints a table (and ``--json``).

    hatch run python tools/compare_revisions.py c86cd7d HEAD                # the 15 default variants, 3 epochs
    hatch run python tools/compare_revisions.py c86cd7d HEAD --variants finetune,dgr --epochs 2

A variant is a method name or ``LABEL=METHOD OPTIONS...`` (as tools/method_matrix.py). Variants a revision does not
know end in an error and are reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cil-losses", "cil-models", "cil-data", "cil-train")
DEFAULT = ("finetune", "il-baseline", "bsce", "bsce-meta=bsce-meta --meta-interval 2", "bsce-relaxed", "lwf", "icarl",
           "icarl-jioc", "icarl-jioc-oc=icarl-jioc --jioc oc", "wa=wa --wa-clip",
           "ssil=ssil --ssil-batch-new 32 --ssil-batch-memory 8", "dgr", "dgr-gr=dgr --no-dgr-dakd --no-dgr-decouple",
           "dgr-grad=dgr --dgr-offsets grad", "ft-total=finetune --memory-total 60")
TIMINGS = ("wall_seconds", "phase_seconds", "seconds", "train_seconds")


def _variant(spec: str) -> tuple[str, list[str]]:
    label, _, rest = spec.partition("=")
    words = shlex.split(rest) if rest else [label]
    return label, ["--method", words[0], *words[1:]]


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


class CheckoutError(RuntimeError):
    """A revision that names neither a commit of this repository nor a folder (git's message attached)."""


def check_revision(rev: str) -> None:
    """Raise :class:`CheckoutError` unless ``rev`` is a folder or names a commit here (checked before any run)."""
    if Path(rev).is_dir():
        return
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        said = done.stderr.strip()
        raise CheckoutError(f"{rev!r} is neither a folder nor a commit of {ROOT} "
                            f"(`git rev-parse --verify {rev}` failed{': ' + said if said else ''})")


@contextlib.contextmanager
def checkout(rev: str, where: Path):
    """The tree holding ``rev``'s packages: a detached ``git worktree`` at ``where``, removed afterwards, or ``rev``
    itself when it names a folder holding a checkout (the working tree with its uncommitted changes, say).
    Raises :class:`CheckoutError` (with git's message) when the worktree cannot be made."""
    if Path(rev).is_dir():
        yield Path(rev).resolve()
        return
    done = subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        said = done.stderr.strip() or f"exit {done.returncode}"
        raise CheckoutError(f"cannot check out {rev!r} into {where}: {said}")
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)


def packages_env(tree: Path, threads: int = 1) -> dict[str, str]:
    """The environment of a ``python -m cil_train`` that imports the four packages from ``tree``."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(str(tree / "packages" / p / "src") for p in PACKAGES)}


def run_revision(tree: Path, variants: list[tuple[str, list[str]]], out: Path, common: list[str]) -> dict[str, dict]:
    env = packages_env(tree)
    results = {}
    for label, argv in variants:
        folder = out / label
        cmd = [sys.executable, "-m", "cil_train", *common, *argv, "--out", str(folder)]
        done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
        metrics = folder / "metrics.json"
        results[label] = (json.loads(metrics.read_text()) if done.returncode == 0 and metrics.is_file()
                          else {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]})
        print(f"  {tree.name}: {label} {'done' if 'error' not in results[label] else 'FAILED'}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev_a")
    p.add_argument("rev_b")
    p.add_argument("--variants", default=None, help="comma-separated variants (default: 15 covering every "
                   "round-1 method and its main options)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    for rev in (args.rev_a, args.rev_b):
        try:
            check_revision(rev)
        except CheckoutError as err:
            p.error(str(err))
    variants = [_variant(v) for v in (args.variants.split(",") if args.variants else DEFAULT)]
    common = ["--data", "embedded", "--epochs", str(args.epochs), "--threads", "1", "--progress", "none",
              "--no-plots", "--seed", str(args.seed)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, rev in (("a", args.rev_a), ("b", args.rev_b)):
            with checkout(rev, tmp / f"tree-{name}") as tree:
                results[name] = run_revision(tree, variants, tmp / f"runs-{name}", common)
    print(f"\n| variant | avg inc. acc {args.rev_a} | {args.rev_b} | last acc {args.rev_a} | {args.rev_b} | "
          "metrics.json identical |\n|---|---:|---:|---:|---:|---|")
    same_all = True
    for label, _ in variants:
        a, b = results["a"][label], results["b"][label]
        if "error" in a or "error" in b:
            print(f"| {label} | — | — | — | — | error: {(a.get('error') or b.get('error'))[0]} |")
            same_all = False
            continue
        same = without_timings(a) == without_timings(b)
        same_all &= same
        print(f"| {label} | {a['avg_inc_acc']:.2f} | {b['avg_inc_acc']:.2f} | {a['last_acc']:.2f} | "
              f"{b['last_acc']:.2f} | {'yes' if same else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"rev_a": args.rev_a, "rev_b": args.rev_b, "results": results}, indent=1))
    return 0 if same_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
