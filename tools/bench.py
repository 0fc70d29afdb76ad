"""Run a benchmark under tools/: ``hatch run bench NAME [OPTIONS]`` (``--list`` shows them).

Each benchmark is a module ``tools/bench_<name>.py`` exposing ``main(argv) -> int``; every one
accepts ``--json PATH`` to write its figures and prints ratios against a plain reference measured
in the same run (these machines are noisy: compare ratios, not absolute times, across machines).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(TOOLS.glob("bench_*.py"))}


def _summary(path: Path) -> str:
    for line in path.read_text().splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return line
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    benches = available()
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        print("benchmarks:")
        for name, path in benches.items():
            print(f"  {name:<10} {_summary(path)}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in benches:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(benches)}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{name}", benches[name])
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
