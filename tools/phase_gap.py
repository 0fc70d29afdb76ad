"""Where two methods of a committed matrix part ways: their accuracy gap phase by phase, beside the data.

    hatch run python tools/phase_gap.py results/glyphs100-lt-ordered-fair dgr icarl

For each phase: the new classes' mean number of training images, the new images in all, the exemplars of the
old classes in memory at that phase, the old classes' original training images over the new ones
(``N_seen / N_new``), and the mean over the seeds both methods ran of ``A − B`` in accuracy on all seen
classes, on the old classes and on the new ones (percentage points), with the per-seed signs of the first. It
reads the committed records (``OUT/records/*.json``, one per run), so it needs no run folder.

It is the probe behind the README's reading of DGR on the ordered stream (table (j)): DGR leads while a phase
brings more new images than the memory holds and falls behind once it brings fewer, where its KD weight
``0.7·sqrt(N_seen / N_new)`` grows large; the row with that weight capped recovers most of the loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def load_records(folder: Path, label: str) -> dict[int, dict]:
    """Seed → the metrics of each run of ``label`` in the matrix ``folder``."""
    summary = json.loads((folder / "summary.json").read_text())
    if label not in summary:
        raise SystemExit(f"{folder}: no variant {label!r} (there are: {', '.join(summary)})")
    out = {}
    for rel, seed in zip(summary[label]["runs"], summary[label]["seeds"]):
        record = folder / "records" / f"{Path(rel).name}.json"
        metrics = json.loads(record.read_text())["metrics"]
        if "acc_per_phase" not in metrics:
            continue  # a record rebuilt from a summary has no per-phase figures
        out[int(seed)] = metrics
    return out


def phase_data(metrics: dict) -> list[dict]:
    """Per phase: mean images per new class, new images in all, exemplars of the old classes in memory, and
    the old classes' original training images over the new ones (``N_seen / N_new``; DGR's KD weight is
    ``0.7·sqrt`` of it)."""
    # train_counts and memory_per_class are indexed by the class's position in the stream (its incremental
    # label), not by its original label: a phase's classes are a slice of them
    counts, memory = metrics["train_counts"], metrics["memory_per_class"]
    rows, start = [], 0
    for n in metrics["increments"]:
        new = counts[start:start + n]
        rows.append({"per_new_class": statistics.fmean(new), "new_images": sum(new),
                     "memory": sum(memory[:start]), "seen_per_new": sum(counts[:start]) / sum(new)})
        start += n
    return rows


def _gap(a: list[float | None], b: list[float | None]) -> list[float | None]:
    return [None if x is None or y is None else x - y for x, y in zip(a, b)]


def phase_gap(folder: Path, label_a: str, label_b: str) -> tuple[list[dict], list[int]]:
    """The per-phase rows (data and mean gaps) and the seeds both labels ran."""
    a, b = load_records(folder, label_a), load_records(folder, label_b)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit(f"{folder}: {label_a!r} and {label_b!r} have no seed with per-phase figures in common")
    rows = phase_data(a[seeds[0]])
    for key, name in (("acc_per_phase", "all"), ("old_acc", "old"), ("new_acc", "new")):
        gaps = [_gap(a[s][key], b[s][key]) for s in seeds]
        for t, row in enumerate(rows):
            values = [g[t] for g in gaps if g[t] is not None]
            row[name] = statistics.fmean(values) if values else None
            if name == "all":
                row["signs"] = "".join("+" if v > 0 else ("−" if v < 0 else "0") for v in values)
    return rows, seeds


def markdown(rows: list[dict], label_a: str, label_b: str) -> str:
    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:+.2f}"

    lines = [f"| phase | images per new class | new images | exemplars of old classes | N_seen ÷ N_new | {label_a} − "
             f"{label_b}: all | per-seed signs | old classes | new classes |", "|---:|---:|---:|---:|---:|---:|:---:|---:|---:|"]
    for t, r in enumerate(rows, 1):
        lines.append(f"| {t} | {r['per_new_class']:.0f} | {r['new_images']} | {r['memory']} | {r['seen_per_new']:.2f} | "
                     f"{num(r['all'])} | "
                     f"{r['signs']} | {num(r['old'])} | {num(r['new'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a committed matrix folder (results/<protocol>)")
    p.add_argument("a", help="the variant whose lead is measured")
    p.add_argument("b", help="the variant it is compared with")
    args = p.parse_args(argv)
    rows, seeds = phase_gap(args.folder, args.a, args.b)
    print(f"{args.folder.name}: {args.a} − {args.b}, mean over seeds {', '.join(map(str, seeds))} "
          "(accuracy in percentage points)\n")
    print(markdown(rows, args.a, args.b), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
