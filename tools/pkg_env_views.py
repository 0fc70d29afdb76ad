"""Hard-linked views of torch and torchvision for the per-package test environments (``pkg`` in hatch.toml).

The CUDA build of torch 2.14.1 takes about 4.4 GB in a virtual environment, and the ``pkg`` matrix has
four environments besides the default one: five copies filled the disk of a CI machine. This tool, run in
the default environment (``hatch run test`` does it before ``hatch run pkg:test``), builds two folders under
``.pkg-env-views/`` at the workspace root:

* ``torch/``       the files of torch and of every distribution it needs (nvidia-*, triton, sympy, ...),
* ``torchvision/`` the same for torchvision (torch, numpy, pillow, ...),

each file a hard link to the default environment's copy (no extra disk; a plain copy where the file
system refuses links). The ``pkg`` environments put the right folder on ``PYTHONPATH``, so pip finds
torch already installed and installs only the package under test, its other declared dependencies and
pytest. A view holds nothing but the closure of its root requirement, so each ``pkg`` environment still
sees only what its package declares. Without the views (e.g. ``hatch run +package=cil-losses pkg:test``
on a fresh clone) pip simply installs torch into the environment.

    hatch run python tools/pkg_env_views.py            # (re)build the views when out of date
    hatch run python tools/pkg_env_views.py --check    # say whether they are up to date
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ROOT / ".pkg-env-views"
ROOTS = {"torch": "torch", "torchvision": "torchvision"}  # view name -> root distribution


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, md.Distribution]:
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_canonical(name), dist)
    return found


def closure(root: str, installed: dict[str, md.Distribution]) -> list[md.Distribution]:
    """``root`` and every installed distribution it requires, following the extras that requirements ask for
    (``cuda-toolkit[cublas,cudart,...]``); markers are evaluated for this interpreter."""
    from packaging.requirements import Requirement

    todo: list[tuple[str, frozenset[str]]] = [(_canonical(root), frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        if name not in installed:
            raise SystemExit(f"{name} is required (by the closure of {root}) but not installed in {sys.prefix}")
        seen.add((name, extras))
        for spec in installed[name].requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((_canonical(req.name), frozenset(req.extras)))
    return [installed[n] for n in sorted({n for n, _e in seen})]


def _fingerprint(dists: list[md.Distribution]) -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in dists}


def _site_files(dist: md.Distribution) -> list[tuple[Path, Path]]:
    """(relative path in site-packages, absolute source) of every file the distribution installed there."""
    base = Path(dist.locate_file(""))
    out = []
    for rel in dist.files or []:
        rel_path = Path(str(rel))
        if rel_path.parts and rel_path.parts[0] == "..":  # scripts, headers, data outside site-packages
            continue
        src = base / rel_path
        if src.is_file():
            out.append((rel_path, src))
    return out


def build_view(name: str, dists: list[md.Distribution]) -> tuple[int, int]:
    """Replace ``VIEWS/name`` by links to the files of ``dists``; returns (files, files copied not linked)."""
    target = VIEWS / name
    tmp = VIEWS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    files = copied = 0
    for dist in dists:
        for rel, src in _site_files(dist):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                continue
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)
                copied += 1
            files += 1
    (tmp / "VIEW.json").write_text(json.dumps(_fingerprint(dists), indent=1, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return files, copied


def up_to_date(name: str, dists: list[md.Distribution]) -> bool:
    stamp = VIEWS / name / "VIEW.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == _fingerprint(dists)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report; exit 1 when a view is missing or stale")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = p.parse_args(argv)
    installed = _installed()
    stale = 0
    for name, root in ROOTS.items():
        dists = closure(root, installed)
        label = f"{VIEWS.relative_to(ROOT)}/{name} ({len(dists)} distributions)"
        if up_to_date(name, dists) and not args.force:
            print(f"{label}: up to date")
            continue
        if args.check:
            print(f"{label}: missing or stale")
            stale += 1
            continue
        files, copied = build_view(name, dists)
        how = f"{files} files hard-linked" if not copied else f"{files} files ({copied} copied: no hard links here)"
        print(f"{label}: built, {how}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
