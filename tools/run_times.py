"""The run time of every committed matrix: ``hatch run python tools/run_times.py`` prints a markdown table.

``--readme`` also writes it between the ``<!-- run-times:begin -->`` / ``<!-- run-times:end -->`` markers of
README.md; ``--check`` exits 1 when the README's table is not what the results give.

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


def table(results: Path) -> str:
    lines = ["| results folder | preset | runs | mean run time | summed run time |", "|---|---|---:|---:|---:|"]
    found = rows(results)
    for name, preset, n, mean, total in found:
        lines.append(f"| {name} | `{preset}` | {n} | {mean / 60:.1f} min | {total / 3600:.1f} h |")
    lines.append(f"| all | | {sum(r[2] for r in found)} | | {sum(r[4] for r in found) / 3600:.1f} h |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- run-times:begin -->", "<!-- run-times:end -->"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", type=Path, default=ROOT / "results")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not current")
    args = p.parse_args(argv)
    text = table(args.results)
    print(text, end="")
    if args.readme or args.check:
        readme = ROOT / "README.md"
        content = readme.read_text()
        head, rest = content.split(BEGIN, 1)
        _old, tail = rest.split(END, 1)
        new = f"{head}{BEGIN}\n{text}{END}{tail}"
        if args.check:
            if new != content:
                print("README.md's run-time table is out of date: hatch run python tools/run_times.py --readme",
                      file=sys.stderr)
                return 1
        else:
            readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
