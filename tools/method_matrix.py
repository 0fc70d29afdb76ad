"""Run a matrix of methods × seeds on one protocol and write the comparison table.

Each cell is one ``cil-train`` run (a subprocess) into ``OUT/runs/<variant>-s<seed>``; finished cells
are skipped and interrupted ones resumed, so the command can be stopped and started again. At the
end (and with ``--table-only``) the runs are grouped by variant and summarised as mean ± std over
the seeds: average incremental accuracy, last accuracy, forgetting, old/new accuracy after the last
phase and the mean imbalance score (``OUT/table.md``, ``OUT/summary.json``, ``OUT/accuracy.png``).

Run folders are not committed (checkpoints are large), so each finished cell is also kept as a small
record, ``OUT/records/<variant>-s<seed>.json`` (its ``metrics.json`` and seed), which is committed.
A cell whose run folder is absent but whose record exists counts as done: a fresh clone can add seeds
or variants to a committed matrix and the table still holds every seed. A record written before
records existed (``"reconstructed_from"`` names the summary it came from) holds only the summary
figures, not the per-phase curve: it is left out of ``accuracy.png`` (the mean curve of the other
seeds; the figure is not redrawn when no cell has a curve).

A variant is a method name, or ``LABEL=METHOD OPTIONS...`` for ablations, e.g.::

    hatch run python tools/method_matrix.py --preset glyphs100-lt --seeds 1,2,3 --out results/glyphs100-lt \\
        --methods finetune,il-baseline,bsce,bsce-meta,ssil,icarl,icarl-jioc,wa,dgr
    hatch run python tools/method_matrix.py --preset glyphs100-lt --seeds 1,2,3 --out results/ablations \\
        --variant "CE+KD=icarl-jioc --jioc none" --variant "IC+KD=icarl-jioc --jioc ic" \\
        --variant "CE+OC=icarl-jioc --jioc oc" --variant "JIOC=icarl-jioc --jioc both"

Options after ``--`` go to every run (e.g. ``-- --epochs 8 --threads 2``). ``hatch run`` swallows the first
``--`` of its command line, so options this tool does not know, written after all of its own, go to every run
too: ``hatch run python tools/method_matrix.py ... -- --threads 1`` works as written.

``OUT/matrix.json`` records every variant and seed the folder holds, so a later call that adds methods or
seeds to a committed matrix merges with it: it runs only the cells it names, and the table and summary keep
every variant and seed of the folder (a call with other common options or another preset than the folder's is
refused, since its cells would not compare). ``--table-only`` without methods rebuilds the folder's table.

``--shared-base`` gives every cell ``--base-cache OUT/base`` (not committed): one base model per seed is
trained by the first cell that needs it and loaded by every later cell whose method's phase 0 is plain
cross-entropy (finetune, il-baseline, lwf, icarl, wa, ssil), as the papers start their methods from one base
model: those methods then differ only in their incremental phases. The other methods train their own phase
0, once per seed: the variants of a method that differ only in options of the later phases
(``Method.incremental_only``, e.g. DGR's KD cap, FOSTER's β) load it, which ends exactly as training it
again (``tests/test_base_checkpoint.py``) and saves phase 0's share of the cell: on the fair presets' 3,000
base steps, 101-121 s of a 363-642 s DGR, LUCIR, PODNet or FOSTER run (18-29 %, committed records).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_options import parse_with_common_options  # noqa: E402  (re-exported: the tests import it from here)

from cil_train.compare import COLUMNS, RunSummary, group_runs, load_run, markdown_table, summary_json, mean_curve
from cil_train.methods import methods
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


def merge_matrix(old: dict | None, preset: str, variants: list[tuple[str, list[str]]], seeds: list[int],
                 common: list[str]) -> dict:
    """The folder's ``matrix.json`` with the given variants and seeds added (``old`` is the file's content).

    Refuses (``SystemExit``) a preset or common options that differ from the folder's, and a label that the
    folder already holds with other options: the folder's cells must compare.
    """
    if old is None:
        return {"preset": preset, "variants": dict(variants), "seeds": list(seeds), "common_options": list(common)}
    if old["preset"] != preset:
        raise SystemExit(f"this folder holds a matrix of preset {old['preset']!r}, not {preset!r}: use another --out")
    if list(old.get("common_options", [])) != list(common):
        raise SystemExit(f"this folder's runs were given {shlex.join(old.get('common_options', []))!r} after --, "
                         f"this call {shlex.join(common)!r}: give the same options or use another --out")
    merged = dict(old["variants"])
    for label, opts in variants:
        if label in merged and merged[label] != opts:
            raise SystemExit(f"variant {label!r} is in this folder as {shlex.join(merged[label])!r}, "
                             f"not {shlex.join(opts)!r}: give it another label")
        merged[label] = opts
    return {"preset": preset, "variants": merged, "seeds": [*old["seeds"], *(s for s in seeds if s not in old["seeds"])],
            "common_options": list(common)}


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def cell_folder(out: Path, label: str, seed: int) -> Path:
    """``OUT/runs/<variant>-s<seed>``: the run folder of one cell."""
    return out / "runs" / f"{_safe(label)}-s{seed}"


def record_path(folder: Path) -> Path:
    """``OUT/records/<cell>.json`` for the run folder ``OUT/runs/<cell>``."""
    return folder.parent.parent / "records" / f"{folder.name}.json"


def _finished(folder: Path) -> bool:
    metrics = folder / "metrics.json"
    return metrics.is_file() and bool(json.loads(metrics.read_text()).get("complete"))


def load_cell(label: str, folder: Path) -> RunSummary | None:
    """The finished cell from its run folder (refreshing its record) or, without one, from its record."""
    record = record_path(folder)
    if _finished(folder):
        run = load_run(folder, label)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"label": label, "seed": run.seed, "metrics": run.metrics}) + "\n")
        return run
    if record.is_file():
        data = json.loads(record.read_text())
        return RunSummary(folder, label, int(data["seed"]), data["metrics"])
    return None


def records_from_summary(out: Path) -> list[Path]:
    """Records for the cells of ``OUT/summary.json`` that have neither a run folder nor a record.

    For matrices committed before records existed: the summary keeps each seed's figures, so the
    record holds those (not the per-phase curve) and says where it came from.
    """
    summary = json.loads((out / "summary.json").read_text())
    written = []
    for label, entry in summary.items():
        for k, (rel, seed) in enumerate(zip(entry["runs"], entry["seeds"])):
            folder = out / rel
            if folder.exists() or record_path(folder).is_file():
                continue
            value = {key: entry[key]["values"][k] for key, _t in COLUMNS
                     if len(entry[key]["values"]) == len(entry["runs"])}
            metrics = {"complete": True, "reconstructed_from": "summary.json",
                       **{key: value[key] for key in ("avg_inc_acc", "last_acc", "forgetting", "wall_seconds")
                          if key in value},
                       "old_acc": [value.get("last_old_acc")], "new_acc": [value.get("last_new_acc")],
                       "imbalance_score": [value.get("imbalance_score")]}
            path = record_path(folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"label": label, "seed": int(seed), "metrics": metrics}) + "\n")
            written.append(path)
    return written


def run_cell(folder: Path, preset: str, argv: list[str], seed: int, common: list[str], log: Path) -> str:
    if _finished(folder):
        return "done"
    if not folder.exists() and record_path(folder).is_file():
        return "done (record)"
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
    runs = [run for label, folder in cells if (run := load_cell(label, folder)) is not None]
    if not runs:
        return "(no finished run yet)\n"
    groups = group_runs(runs)
    table = markdown_table(groups)
    seconds = [r.metrics.get("wall_seconds") or 0.0 for r in runs]
    table += (f"\n{len(seconds)} runs, {sum(seconds) / 3600:.1f} h of run time in all (each run's wall time; "
              f"runs that shared the cores overlap)\n")
    (out / "table.md").write_text((f"## {title}\n\n" if title else "") + table)
    summary = summary_json(groups)
    for entry in summary.values():  # run folders relative to OUT, so that a committed summary stays valid
        entry["runs"] = [os.path.relpath(folder, out) for folder in entry["runs"]]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    curves = {lab: [r for r in rs if "acc_per_phase" in r.metrics] for lab, rs in groups.items()}
    if any(curves.values()):  # else keep the committed figure: records from a summary have no curve
        plot_accuracy_curves([(lab, mean_curve(rs)) for lab, rs in curves.items() if rs], out / "accuracy.png",
                             title)
    return table


def build_parser() -> argparse.ArgumentParser:
    """The command line of this tool (the options of every run come after them, see ``main``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", help="the protocol (a cil-train preset); default with --table-only: the folder's")
    p.add_argument("--methods", help="comma-separated method names")
    p.add_argument("--variant", action="append", default=[], help="LABEL=METHOD [OPTIONS...] (repeatable)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time; each gets cores/jobs threads unless the options set --threads")
    p.add_argument("--shared-base", action="store_true",
                   help="--base-cache OUT/base for every cell: one base model per seed for the methods whose phase 0 is "
                        "plain CE, one per method and seed for the variants of another method")
    p.add_argument("--records-from-summary", action="store_true",
                   help="first write records for the cells of a committed OUT/summary.json that have none")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, common = parse_with_common_options(build_parser(), argv)
    matrix_file = args.out / "matrix.json"
    old = json.loads(matrix_file.read_text()) if matrix_file.is_file() else None
    if args.table_only and old is not None and not (args.methods or args.variant):
        variants = list(old["variants"].items())
    else:
        variants = parse_variants(args.methods, args.variant)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.table_only and old is not None:  # the table only reads the folder's cells
        common = list(old.get("common_options", []))
        args.preset = args.preset or old["preset"]
    if not args.preset:
        raise SystemExit("give --preset (this folder has no matrix.json to take it from)")
    matrix = merge_matrix(old, args.preset, variants, seeds, common)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.records_from_summary:
        for path in records_from_summary(args.out):
            print(f"record from summary.json: {path}")
    cells = [(label, cell_folder(args.out, label, seed), opts, seed) for label, opts in variants for seed in seeds]
    table_cells = [(label, cell_folder(args.out, label, seed)) for label in matrix["variants"] for seed in matrix["seeds"]]
    if not args.table_only:
        matrix_file.write_text(json.dumps(matrix, indent=2))
        if args.jobs > 1 and "--threads" not in common:
            common = [*common, "--threads", str(max(1, (os.cpu_count() or 1) // args.jobs))]

        def one(k: int, label: str, folder: Path, opts: list[str], seed: int) -> None:
            start = time.perf_counter()
            if args.shared_base:
                opts = [*opts, "--base-cache", str(args.out / "base")]
            status = run_cell(folder, args.preset, opts, seed, common, args.out / f"runs-{k % args.jobs}.log")
            print(f"[{k}/{len(cells)}] {label} seed {seed}: {status} ({time.perf_counter() - start:.0f} s)", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda cell: one(*cell), [(k, *c) for k, c in enumerate(cells, 1)]))
    print(write_table(args.out, table_cells, args.title), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
