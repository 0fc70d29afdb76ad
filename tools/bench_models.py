"""cil-models: frozen feature extractors (DER/FOSTER) run one by one vs stacked with vmap.

    hatch run bench models                 # ResNet-32, batch 128, 32×32, 2..5 frozen extractors
    hatch run bench models --quick         # a few-second smoke run (ResNet-8, batch 16)
    hatch run bench models --threads 2 --repeats 5 --json out.json

Rows, one per number n of same-shaped frozen extractors, in inference mode (eval batch norm):
  loop      a Python loop over the n extractors, features concatenated (the reference; what
            IncrementalNet.features does).
  vmap      torch.func.stack_module_state + functional_call under torch.vmap over the n
            extractors (PyTorch's batching rule turns each convolution into one grouped
            convolution with n groups, so this also stands for a hand-written grouped network).
The two are timed interleaved after one warm-up each (rounds alternate the order: loop then
vmap, vmap then loop); times are medians of --repeats, and "paired" is the median over rounds
of the ratio loop/vmap measured within a round (robust to a load that changes between rounds on
a shared machine). Compare the ratios across machines, not the times.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state

from cil_models import build_backbone


def make_extractors(name: str, n: int, seed: int = 0) -> list[torch.nn.Module]:
    """``n`` frozen extractors of one architecture with different weights, in eval mode."""
    torch.manual_seed(seed)
    return [build_backbone(name).eval().requires_grad_(False) for _ in range(n)]


def loop_features(extractors: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    return torch.cat([e(x) for e in extractors], dim=1)


def stacked_features_fn(extractors: list[torch.nn.Module]):
    """A function ``x -> [B, n·d]`` running the extractors under one vmap."""
    params, buffers = stack_module_state(extractors)
    skeleton = copy.deepcopy(extractors[0]).to("meta")

    def one(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    batched = torch.vmap(one, in_dims=(0, 0, None))

    def run(x: torch.Tensor) -> torch.Tensor:
        out = batched(params, buffers, x)  # [n, B, d]
        return out.permute(1, 0, 2).flatten(1)

    return run


def interleaved_times(fns: dict[str, object], x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Per-round times of each function; the order within a round alternates."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn(x)  # warm-up
    for round_index in range(repeats):
        items = list(fns.items())
        for name, fn in items if round_index % 2 == 0 else items[::-1]:
            t0 = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench models", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-8, batch 16, one repeat (smoke test)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--extractors", type=int, nargs="+", default=[2, 3, 4, 5])
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.batch, args.repeats, args.extractors = "resnet8", 16, 1, [2]
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(
        f"frozen extractors, inference mode: {args.backbone}, batch {args.batch}, {args.size}x{args.size}, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    print(f"{'n':>3} {'loop ms':>10} {'vmap ms':>10} {'loop/vmap':>10} {'paired':>8} {'max |diff|':>11}")
    rows = {}
    for n in args.extractors:
        extractors = make_extractors(args.backbone, n)
        stacked = stacked_features_fn(extractors)
        with torch.inference_mode():
            diff = (loop_features(extractors, x) - stacked(x)).abs().max().item()
            times = interleaved_times({"loop": lambda x: loop_features(extractors, x), "vmap": stacked}, x, args.repeats)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        ratio = medians["loop"] / medians["vmap"]
        paired = statistics.median(a / b for a, b in zip(times["loop"], times["vmap"]))
        rows[str(n)] = {
            "loop_s": medians["loop"],
            "vmap_s": medians["vmap"],
            "loop_over_vmap": ratio,
            "paired_loop_over_vmap": paired,
            "max_abs_diff": diff,
        }
        print(
            f"{n:>3} {medians['loop'] * 1e3:>10.1f} {medians['vmap'] * 1e3:>10.1f} {ratio:>10.2f} {paired:>8.2f} {diff:>11.2e}"
        )
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)}, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
