"""cil-data: vectorised herding vs a per-sample loop, and exemplar-memory file write/load times.

    hatch run bench data                 # full run, prints a table
    hatch run bench data --quick         # a few-second smoke run
    hatch run bench data --json out.json --device cuda
    hatch run bench data --threads 1     # stable figures on a busy shared CPU

Rows:
  herding            herding_order, k=20 of n=500 samples, d=64 features, against the plain reference
                     that tries every unchosen sample in a Python loop (FACIL-style) — goal ≥ 10×.
  herding 10 classes herding_select over 10 classes at once against 10 calls of herding_order.
  memory save/load   ExemplarMemory.save (atomic: new file, fsync, os.replace, fsync folder; SHA-256) and
                     .load (checksum verified) of 2,000 uint8 images 3×32×32, against a plain
                     torch.save / torch.load of the same tensors (no fsync, no checksum).
Times are medians of --repeats runs after one warm-up; compare the ratios across machines, not the times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cil_data import ExemplarMemory, MemoryBudget, herding_order, herding_select


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _reference_herding():
    """The per-sample Python-loop herding of cil-data's tests (packages/cil-data/tests/references.py)."""
    path = Path(__file__).resolve().parents[1] / "packages" / "cil-data" / "tests" / "references.py"
    spec = importlib.util.spec_from_file_location("cil_data_bench_references", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_herding


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke test)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per row (median)")
    parser.add_argument("--device", default="cpu", help="device of the vectorised herding (cpu, cuda)")
    parser.add_argument("-n", type=int, default=500, help="samples per class")
    parser.add_argument("-d", type=int, default=64, help="feature dimension")
    parser.add_argument("-k", type=int, default=20, help="exemplars chosen")
    parser.add_argument("--images", type=int, default=2000, help="images in the memory file")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 gives stable figures on a busy machine")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.k, args.images, args.repeats = 100, 5, 200, 1
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows: list[dict[str, object]] = []
    reference_herding = _reference_herding()

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(args.n, args.d, generator=g)
    feats_dev = feats.to(device)
    if herding_order(feats_dev, args.k).cpu().tolist() != reference_herding(feats, args.k):
        print("herding_order disagrees with the reference", file=sys.stderr)
        return 1
    ref = median_time(lambda: reference_herding(feats, args.k), max(1, min(args.repeats, 3)))
    vec = median_time(lambda: herding_order(feats_dev, args.k), args.repeats, sync)
    rows.append({"row": f"herding k={args.k} n={args.n} d={args.d}", "reference_s": ref, "ours_s": vec,
                 "speedup": ref / vec, "reference": "per-sample Python loop (CPU)", "device": str(device)})

    classes = 10
    labels = torch.arange(classes).repeat_interleave(args.n)
    many = torch.randn(classes * args.n, args.d, generator=g).to(device)
    quotas = torch.full((classes,), args.k)
    members = [torch.nonzero(labels == c).flatten().to(device) for c in range(classes)]
    loop = median_time(lambda: [herding_order(many[m], args.k) for m in members], args.repeats, sync)
    grouped = median_time(lambda: herding_select(many, labels.to(device), quotas), args.repeats, sync)
    rows.append({"row": f"herding {classes} classes at once", "reference_s": loop, "ours_s": grouped,
                 "speedup": loop / grouped, "reference": f"{classes} herding_order calls", "device": str(device)})

    images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=g, dtype=torch.uint8)
    mem = ExemplarMemory(MemoryBudget.per_class(args.images), "random")
    mem.update(images, torch.arange(args.images) % 10, None, 10)
    mem.class_order = list(range(10))
    with tempfile.TemporaryDirectory() as tmp:
        path, plain = Path(tmp) / "memory.h5", Path(tmp) / "plain.pt"
        state = {"images": mem.images, "labels": mem.labels}
        ref_save = median_time(lambda: torch.save(state, plain), args.repeats)
        save = median_time(lambda: mem.save(path), args.repeats)
        ref_load = median_time(lambda: torch.load(plain), args.repeats)
        load = median_time(lambda: ExemplarMemory.load(path), args.repeats)
        size = path.stat().st_size
    rows.append({"row": f"memory save {args.images}×3×32×32", "reference_s": ref_save, "ours_s": save,
                 "speedup": ref_save / save, "reference": "torch.save (no fsync/checksum)", "bytes": size})
    rows.append({"row": f"memory load {args.images}×3×32×32", "reference_s": ref_load, "ours_s": load,
                 "speedup": ref_load / load, "reference": "torch.load (no checksum)", "bytes": size})

    print(f"{'benchmark':<34} {'reference':>11} {'cil-data':>11} {'ratio':>8}  reference is")
    for r in rows:
        print(f"{r['row']:<34} {r['reference_s'] * 1e3:>9.2f}ms {r['ours_s'] * 1e3:>9.2f}ms {r['speedup']:>7.1f}×  {r['reference']}")
    print(f"ratio = reference time / cil-data time (> 1: cil-data is faster); medians of {args.repeats} repeats, "
          f"{torch.get_num_threads()} CPU thread(s)")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "data", "quick": args.quick, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
