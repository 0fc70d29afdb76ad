"""The run time of every committed matrix: ``hatch run python tools/run_times.py`` prints a markdown table.

For each ``results/<protocol>/summary.json``: the preset it ran (``matrix.json``), the number of runs, the mean
wall time of one run and the summed run time (each run's own wall time, as ``metrics.json`` records it; the
matrices ran two runs at a time on two cores, so a matrix took about half its summed time on the clock).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(results: Path) -> list[tuple[str, str, int, float, float]]:
    out = []
    for summary in sorted(results.glob("*/summary.json")):
        folder = summary.parent
        matrix = folder / "matrix.json"
        preset = json.loads(matrix.read_text()).get("preset", "?") if matrix.is_file() else "?"
        seconds = [v for label, entry in json.loads(summary.read_text()).items()
                   if not label.endswith(" (NME)")  # the same runs' nearest-mean rows
                   for v in entry.get("wall_seconds", {}).get("values", [])]
        if seconds:
            out.append((folder.name, preset, len(seconds), statistics.fmean(seconds), sum(seconds)))
    return out


def main(argv: list[str] | None = None) -> int:
    results = Path((argv if argv is not None else sys.argv[1:])[0]) if (argv or sys.argv[1:]) else ROOT / "results"
    table = rows(results)
    print("| results folder | preset | runs | mean run time | summed run time |")
    print("|---|---|---:|---:|---:|")
    for name, preset, n, mean, total in table:
        print(f"| {name} | `{preset}` | {n} | {mean / 60:.1f} min | {total / 3600:.1f} h |")
    total = sum(r[4] for r in table)
    print(f"| all | | {sum(r[2] for r in table)} | | {total / 3600:.1f} h |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
