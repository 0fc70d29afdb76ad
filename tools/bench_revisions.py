"""Whole runs of two revisions, side by side: is the later one faster end to end, and as accurate?

Each revision's packages come from a detached ``git worktree`` (or from a folder holding a checkout, such as the
working tree), and each run is the real command, ``python -m cil_train`` with that revision's packages on
``PYTHONPATH``, timed from outside (process wall time: start-up, imports and teardown included). By default the
two revisions' runs of one (method, seed) start together, one thread each, as the runs of a matrix share a 2-core
machine; ``--alternate`` runs them one after the other instead (which one goes first alternates from one pair
of runs to the next). Both are started from the repository root, so a preset's ``../shared`` data resolves for both.

    hatch run bench revisions 0d97c2a HEAD --methods icarl,dgr --repeats 2 \\
        --json results/speed/revisions-glyphs100-lt.json -- --preset glyphs100-lt
    hatch run bench revisions 0d97c2a HEAD --methods dgr --seeds 1,2,3      # the main job, 3 seeds
    hatch run bench revisions --table-only --json results/speed/revisions-glyphs100-lt.json

Everything after ``--`` goes to both runs (``hatch run`` takes the first ``--`` of its command line for itself,
so the options this tool does not know, written after its own, count as written after ``--``; ``--method``,
``--seed``, ``--threads``, ``--out``, ``--no-plots`` and ``--progress none`` are set here). ``--args-a`` and
``--args-b`` add options to one side's runs only: with one revision on both sides, the pair compares two
configurations of one commit (``--args-a='--compile off' --args-b='--compile on'``). The table gives, per method,
the mean wall time of each side, the speed-up (mean over mean, and the range of the per-pair ratios), the time
inside the training stages and outside them (from ``metrics.json``: the phases' ``train_seconds``, teacher
forwards included, and the rest of the process), and the average incremental accuracy over the seeds (mean ±
standard deviation; NME's too where the method reports it); a seed's metrics may
differ between revisions whose numerics differ.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_revisions import ROOT, CheckoutError, check_revision, checkout, packages_env  # noqa: E402
from run_options import parse_with_common_options  # noqa: E402

from cil_train.checkpoint import atomic_write_json  # noqa: E402
from cil_train.compare import mean_std  # noqa: E402  (the mean ± std cells of ``cil-train compare``)

SIDES = ("a", "b")


def describe(rev: str) -> str:
    """The commit a revision names (short hash; ``+changes`` for a folder whose checkout has uncommitted ones)."""
    where = Path(rev) if Path(rev).is_dir() else ROOT
    name = "HEAD" if Path(rev).is_dir() else rev
    done = subprocess.run(["git", "rev-parse", "--short", name], cwd=where, capture_output=True, text=True)
    if done.returncode != 0:
        return rev
    commit = done.stdout.strip()
    if Path(rev).is_dir():
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True)
        commit += "+changes" if status.stdout.strip() else ""
    return commit


def timed_run(tree: Path, argv: list[str], out: Path, threads: int) -> dict:
    """One ``python -m cil_train`` with the packages of ``tree``: wall time and the figures of its metrics.json."""
    cmd = [sys.executable, "-m", "cil_train", *argv, "--threads", str(threads), "--no-plots", "--progress", "none",
           "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=packages_env(tree, threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    metrics = out / "metrics.json"
    if done.returncode != 0 or not metrics.is_file():
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"wall_s": wall, "error": tail}
    m = json.loads(metrics.read_text())
    train = sum(p.get("train_seconds", 0.0) for p in m["phases"])
    record = {"wall_s": wall, "train_s": train, "outside_train_s": wall - train,
              "avg_inc_acc": m["avg_inc_acc"], "last_acc": m["last_acc"]}
    if m.get("nme"):
        record["nme_avg_inc_acc"] = m["nme"].get("avg_inc_acc")
    return record


def run_pair(trees: dict[str, Path], argv: dict[str, list[str]], outs: dict[str, Path], threads: int,
             alternate: bool, first: str) -> dict[str, dict]:
    """Both revisions' runs of one command (``argv[side]``: the same but for ``--args-a``/``--args-b``): started
    together, or one after the other beginning with ``first``."""
    results: dict[str, dict] = {}

    def go(side: str) -> None:
        results[side] = timed_run(trees[side], argv[side], outs[side], threads)

    if alternate:
        for side in (first, *[s for s in SIDES if s != first]):
            go(side)
    else:
        workers = [threading.Thread(target=go, args=(side,)) for side in SIDES]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return results


def write_json(path: Path, figures: dict) -> None:
    """The results so far, replacing the file whole (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, figures)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def side_name(figures: dict, side: str) -> str:
    """A side as the table's header names it: its commit, and its own options (``--args-a``/``--args-b``) if any."""
    own = figures.get(f"cil_train_args_{side}") or []
    return figures[f"commit_{side}"] + (f" ({' '.join(own)})" if own else "")


def table(figures: dict) -> str:
    """The markdown table of a results dict (as written to ``--json``)."""
    lines = [f"A = {side_name(figures, 'a')}, B = {side_name(figures, 'b')}; {figures['mode']}, "
             f"{figures['threads']} thread(s) a run; cil-train {' '.join(figures['cil_train_args']) or '(defaults)'}",
             "",
             "| method | pairs | wall A | wall B | A ÷ B (pairs) | train A → B | outside training A → B | "
             "avg. inc. acc. A | B |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in figures["methods"]:
        pairs = [r for r in figures["runs"] if r["method"] == method]
        ok = [r for r in pairs if all("error" not in r[s] for s in SIDES)]
        if not ok:
            errors = [r[s]["error"] for r in pairs for s in SIDES if "error" in r[s]]
            lines.append(f"| {method} | {len(pairs)} | error: {errors[0] if errors else 'no runs'} |")
            continue
        wall = {s: [r[s]["wall_s"] for r in ok] for s in SIDES}
        ratios = [r["a"]["wall_s"] / r["b"]["wall_s"] for r in ok]
        part = {(s, k): _mean([r[s][k] for r in ok]) for s in SIDES for k in ("train_s", "outside_train_s")}
        firsts = [r for r in ok if r["repeat"] == 0]  # one run per seed
        accs = {s: mean_std([r[s]["avg_inc_acc"] for r in firsts]) for s in SIDES}
        for s in SIDES:
            nme = [r[s]["nme_avg_inc_acc"] for r in firsts if r[s].get("nme_avg_inc_acc") is not None]
            accs[s] += f" (NME {mean_std(nme)})" if nme else ""
        lines.append(
            f"| {method} | {len(ok)} | {_mean(wall['a']):.1f} s | {_mean(wall['b']):.1f} s | "
            f"**{_mean(wall['a']) / _mean(wall['b']):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}×) | "
            f"{part['a', 'train_s']:.1f} → {part['b', 'train_s']:.1f} s | "
            f"{part['a', 'outside_train_s']:.1f} → {part['b', 'outside_train_s']:.1f} s | "
            f"{accs['a']} | {accs['b']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("rev_a", nargs="?", help="the earlier revision (a commit, or a folder holding a checkout)")
    p.add_argument("rev_b", nargs="?", help="the later revision")
    p.add_argument("--methods", default="icarl,dgr", help="comma-separated methods (default icarl,dgr)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="pairs of runs per (method, seed) (default 1)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (default 1)")
    p.add_argument("--alternate", action="store_true",
                   help="run the two revisions one after the other, not side by side")
    p.add_argument("--json", type=Path, help="write the results here (with --table-only: read them from here)")
    p.add_argument("--table-only", action="store_true", help="print the table of --json's results, run nothing")
    p.add_argument("--args-a", default="", metavar="OPTIONS",
                   help="cil-train options for A's runs only, after the common ones (e.g. --args-a='--compile off' "
                   "--args-b='--compile on' with one revision twice: two configurations of one commit)")
    p.add_argument("--args-b", default="", metavar="OPTIONS", help="cil-train options for B's runs only")
    p.add_argument("--names", help="NAME_A,NAME_B: the revisions' names in the table and the results, instead of "
                   "the commits git describes (for folders outside a git checkout, e.g. a `git archive`)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args, extra = parse_with_common_options(p, argv)  # the cil-train options: after `--` (optional under hatch)
    if args.table_only:
        if not args.json:
            p.error("--table-only needs --json FILE")
        print(table(json.loads(args.json.read_text())))
        return 0
    if not (args.rev_a and args.rev_b):
        p.error("give two revisions (or --table-only --json FILE)")
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1")
    for rev in (args.rev_a, args.rev_b):
        try:
            check_revision(rev)
        except CheckoutError as err:
            p.error(str(err))
    names = args.names.split(",") if args.names else None
    if names is not None and (len(names) != 2 or not all(names)):
        p.error("--names takes two names, NAME_A,NAME_B")
    methods = [m for m in args.methods.split(",") if m]
    side_args = {"a": shlex.split(args.args_a), "b": shlex.split(args.args_b)}
    seeds = [int(s) for s in args.seeds.split(",") if s]
    import torch  # only for the record of the host
    from cil_train.devices import cpu_has_amx

    figures = {"benchmark": "revisions", "rev_a": args.rev_a, "rev_b": args.rev_b,
               "commit_a": names[0] if names else describe(args.rev_a),
               "commit_b": names[1] if names else describe(args.rev_b), "cil_train_args": extra,
               **{f"cil_train_args_{side}": own for side, own in side_args.items() if own},
               "threads": args.threads, "mode": "alternate" if args.alternate else "side by side",
               "methods": methods, "seeds": seeds, "repeats": args.repeats,
               "host": {"machine": platform.machine(), "processor": platform.processor(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "amx": cpu_has_amx(),
                        "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
               "runs": []}
    print(f"{side_name(figures, 'a')} against {side_name(figures, 'b')}, {figures['mode']}, "
          f"{args.threads} thread(s) a run; "
          f"cil-train {' '.join(extra) or '(defaults)'}", flush=True)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with checkout(args.rev_a, tmp / "tree-a") as tree_a, checkout(args.rev_b, tmp / "tree-b") as tree_b:
            trees = {"a": tree_a, "b": tree_b}
            count = 0
            for repeat in range(args.repeats):
                for method in methods:
                    for seed in seeds:
                        run_argv = {s: [*extra, *side_args[s], "--method", method, "--seed", str(seed)]
                                    for s in SIDES}
                        outs = {s: tmp / f"{method}-s{seed}-r{repeat}-{s}" for s in SIDES}
                        first = SIDES[count % 2]
                        count += 1
                        pair = run_pair(trees, run_argv, outs, args.threads, args.alternate, first)
                        figures["runs"].append({"method": method, "seed": seed, "repeat": repeat, **pair})
                        if args.json:  # after every pair: a run stopped from outside keeps what it measured
                            write_json(args.json, figures)
                        for side in SIDES:
                            r = pair[side]
                            what = (f"error: {r['error']}" if "error" in r
                                    else f"avg. inc. {r['avg_inc_acc']:.2f} %")
                            failed |= "error" in r
                            print(f"  {method} seed {seed} repeat {repeat + 1}: {side_name(figures, side)} "
                                  f"{r['wall_s']:.1f} s, {what}", flush=True)
    print()
    print(table(figures))
    if args.json:
        write_json(args.json, figures)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
