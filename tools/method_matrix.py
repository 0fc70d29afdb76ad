"""Run a matrix of methods × seeds on one protocol and write the comparison table.

Each cell is one ``cil-train`` run (a subprocess) into ``OUT/runs/<variant>-s<seed>``; finished cells
are skipped and interrupted ones resumed, so the command can be stopped and started again. At the
end (and with ``--table-only``) the runs are grouped by variant and summarised as mean ± std over
the seeds: average incremental accuracy, last accuracy, forgetting, old/new accuracy after the last
phase and the mean imbalance score (``OUT/table.md``, ``OUT/summary.json``, ``OUT/accuracy.png``).

A variant is a method name, or ``LABEL=METHOD OPTIONS...`` for ablations, e.g.::

    hatch run python tools/method_matrix.py --preset glyphs100-lt --seeds 1,2,3 --out results/glyphs100-lt \\
        --methods finetune,il-baseline,bsce,bsce-meta,ssil,icarl,icarl-jioc,wa,dgr
    hatch run python tools/method_matrix.py --preset glyphs100-lt --seeds 1,2,3 --out results/ablations \\
        --variant "CE+KD=icarl-jioc --jioc none" --variant "IC+KD=icarl-jioc --jioc ic" \\
        --variant "CE+OC=icarl-jioc --jioc oc" --variant "JIOC=icarl-jioc --jioc both"

Options after ``--`` go to every run (e.g. ``-- --epochs 8 --threads 2``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cil_train.compare import group_runs, load_run, markdown_table, summary_json, mean_curve
from cil_train.report import plot_accuracy_curves


def parse_variants(methods: str | None, variants: list[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for name in (methods.split(",") if methods else []):
        out.append((name, ["--method", name]))
    for spec in variants:
        label, _, rest = spec.partition("=")
        words = shlex.split(rest)
        if not label or not words:
            raise SystemExit(f"--variant {spec!r}: expected LABEL=METHOD [OPTIONS...]")
        out.append((label, ["--method", words[0], *words[1:]]))
    if not out:
        raise SystemExit("give --methods and/or --variant")
    return out


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def run_cell(folder: Path, preset: str, argv: list[str], seed: int, common: list[str], log: Path) -> str:
    metrics = folder / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text()).get("complete"):
        return "done"
    if (folder / "checkpoint.pt").is_file():
        cmd = [sys.executable, "-m", "cil_train", "--resume", str(folder), "--progress", "none"]
    else:
        cmd = [sys.executable, "-m", "cil_train", "--preset", preset, *argv, "--seed", str(seed), *common,
               "--out", str(folder), "--progress", "none", "--no-plots"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    return "ran" if code == 0 else f"FAILED (exit {code}, see {log})"


def write_table(out: Path, cells: list[tuple[str, Path]], title: str) -> str:
    runs = [load_run(folder, label) for label, folder in cells if (folder / "metrics.json").is_file()
            and json.loads((folder / "metrics.json").read_text()).get("complete")]
    if not runs:
        return "(no finished run yet)\n"
    groups = group_runs(runs)
    table = markdown_table(groups)
    (out / "table.md").write_text((f"## {title}\n\n" if title else "") + table)
    summary = summary_json(groups)
    for entry in summary.values():  # run folders relative to OUT, so that a committed summary stays valid
        entry["runs"] = [os.path.relpath(folder, out) for folder in entry["runs"]]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy_curves([(lab, mean_curve(rs)) for lab, rs in groups.items()], out / "accuracy.png", title)
    return table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, common = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", required=True)
    p.add_argument("--methods", help="comma-separated method names")
    p.add_argument("--variant", action="append", default=[], help="LABEL=METHOD [OPTIONS...] (repeatable)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time; each gets cores/jobs threads unless the options set --threads")
    args = p.parse_args(argv)
    variants = parse_variants(args.methods, args.variant)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    cells = [(label, args.out / "runs" / f"{_safe(label)}-s{seed}", opts, seed)
             for label, opts in variants for seed in seeds]
    if not args.table_only:
        (args.out / "matrix.json").write_text(json.dumps({
            "preset": args.preset, "variants": {lab: opts for lab, opts in variants}, "seeds": seeds,
            "common_options": common}, indent=2))
        if args.jobs > 1 and "--threads" not in common:
            common = [*common, "--threads", str(max(1, (os.cpu_count() or 1) // args.jobs))]

        def one(k: int, label: str, folder: Path, opts: list[str], seed: int) -> None:
            start = time.perf_counter()
            status = run_cell(folder, args.preset, opts, seed, common, args.out / f"runs-{k % args.jobs}.log")
            print(f"[{k}/{len(cells)}] {label} seed {seed}: {status} ({time.perf_counter() - start:.0f} s)", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda cell: one(*cell), [(k, *c) for k, c in enumerate(cells, 1)]))
    print(write_table(args.out, [(lab, folder) for lab, folder, _o, _s in cells], args.title), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
