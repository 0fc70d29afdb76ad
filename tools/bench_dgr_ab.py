"""A/B timing of the vectorised DGR step: this checkout's cil-losses against the one of a git revision.

On a shared machine the DGR speed-up of ``bench losses`` moves by 10-20 % from one run to the next,
because the per-row reference (Python-bound) and the vectorised step (memory- and dispatch-bound) do
not slow down together; a change worth a few per cent cannot be seen by comparing two such runs. This
script times both versions of the step in the same rounds, each call right after a per-row call (the
order of table 3 of ``bench losses``), and reports the median times and the median of the paired
per-round ratios (use the default 61 rounds or more: an A–A run, the checkout against ``HEAD`` with no
change, gave 0.99 and 1.02 with 61 rounds and 0.88 with 5)::

    python tools/bench_dgr_ab.py be6d42f              # this checkout vs revision be6d42f
    hatch run bench dgr_ab HEAD~3 --rounds 101 --json ab.json

The package at the revision is read with ``git show`` into a temporary directory as
``cil_losses_at_ref`` (its modules import each other relatively, so the copy is self-contained).
Setting: C = 1000 (ten parameter blocks, 900 old classes), D = 64, batch 256, CE with log-prior offsets +
λ_KD·T²·DAKD, one thread (``--threads``), as in ``bench losses``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "packages/cil-losses/src/cil_losses"
sys.path.insert(0, str(ROOT / "tools"))
import bench_losses  # noqa: E402  (the per-row reference and the allocator setting)


def _package_at(revision: str, into: Path) -> None:
    """Write ``cil_losses`` as of ``revision`` to ``into/cil_losses_at_ref``."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{revision}:{PACKAGE}"],
                           check=True, capture_output=True, text=True).stdout.split()
    target = into / "cil_losses_at_ref"
    target.mkdir()
    for name in names:
        if name.endswith(".py"):
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{PACKAGE}/{name}"],
                                    check=True, capture_output=True, text=True).stdout
            (target / name).write_text(source)


def _steps(modules: dict[str, object], ref, batch: int = 256, classes: int = 1000, dim: int = 64):
    scenario = bench_losses.dgr_scenario(batch, classes, dim)
    num_old, n_seen, n_new = scenario.num_old, scenario.n_seen, scenario.n_new
    weights, biases, h, y = scenario.weights, scenario.biases, scenario.h, scenario.y
    teacher, offsets, lost, clear = scenario.teacher, scenario.offsets, scenario.lost, scenario.clear
    current = modules["this checkout"]
    kd_weight = current.dgr_kd_weight(n_seen, n_new)
    gamma = current.dgr_attenuation_gamma(n_seen, n_new)

    def step_of(module):
        layer = module.GradientReweighter(phi_dtype=torch.float32)
        layer.start_phase(classes, num_old, n_seen, n_new)

        def step() -> None:
            clear()
            z_ce, z_kd = layer(h, torch.cat(weights), torch.cat(biases))
            ce = module.logit_adjusted_cross_entropy(z_ce, y, offsets)
            (ce + kd_weight * 4.0 * module.dakd_loss(z_kd[:, :num_old], teacher, lost)).backward()
        return step

    phi = [0.0] * classes

    def per_row() -> None:
        clear()
        ref.reference_dgr_step(
            h, weights, biases,
            lambda z: (current.logit_adjusted_cross_entropy(z, y, offsets),
                       kd_weight * 4.0 * current.dakd_loss(z[:, :num_old], teacher, lost)),
            phi=phi, num_old=num_old, gamma=gamma)

    return per_row, {name: step_of(module) for name, module in modules.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_dgr_ab", description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="git revision whose cil-losses is the baseline (e.g. be6d42f)")
    parser.add_argument("--rounds", type=int, default=61, help="rounds (each: per-row, then one version)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args(argv)
    bench_losses.steady_malloc()
    torch.set_num_threads(args.threads)
    ref = bench_losses._references()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _package_at(args.revision, Path(tmp))
        except (subprocess.CalledProcessError, FileNotFoundError) as err:
            detail = getattr(err, "stderr", "") or err
            print(f"bench_dgr_ab: cannot read {PACKAGE} at revision {args.revision!r}: {str(detail).strip()}",
                  file=sys.stderr)
            return 2
        sys.path.insert(0, tmp)
        baseline = importlib.import_module("cil_losses_at_ref")
        modules = {"this checkout": bench_losses.L, args.revision: baseline}
        per_row, steps = _steps(modules, ref)
        for step in steps.values():
            step()
            step()
        per_row()
        samples: dict[str, list[float]] = {name: [] for name in steps}
        per_row_s: list[float] = []
        order = list(steps.items())
        for r in range(args.rounds):
            random.Random(r).shuffle(order)
            for name, step in order:
                start = time.perf_counter()
                per_row()
                per_row_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                step()
                samples[name].append(time.perf_counter() - start)
    median = statistics.median
    reference = median(per_row_s)
    print(f"DGR step, C=1000, CE + DAKD, {args.threads} thread(s), {args.rounds} rounds, "
          f"each call right after a per-row call (per-row median {reference * 1e3:.2f} ms)")
    for name, values in samples.items():
        print(f"  {name:>14}: {median(values) * 1e3:.3f} ms   per-row / this {reference / median(values):.2f}x")
    paired = median(a / b for a, b in zip(samples["this checkout"], samples[args.revision]))
    print(f"  this checkout / {args.revision}: {paired:.3f} (median of the per-round ratios)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "revision": args.revision, "threads": args.threads, "rounds": args.rounds, "per_row_s": reference,
            "vectorised_s": {name: median(values) for name, values in samples.items()},
            "paired_ratio_this_checkout_to_revision": paired,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
