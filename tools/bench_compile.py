"""Compilation: what ``--compile`` costs (cold and warm cache) and gains per step, and where it breaks even.

Three measurements in one run, on synthetic images of the given shape:

1. **cost, cold**: a fresh process with an empty inductor cache compiles what one ``cil-train`` run compiles
   (the extractors compiled in place as ``--compile`` does, gated by batch size: a training step at the batch
   size, one at a smaller last batch, which runs eager, evaluation without gradients at the evaluation batch
   size and a remainder, eager too, and the teacher, a frozen copy, compiled the same way);
2. **cost, warm**: the same in a second fresh process that finds the first one's cache (what the next run of a
   matrix pays on the same machine);
3. **gain**: training steps of an eager and a compiled network alternated in one process (same weights, same
   batch), images/s and their ratio, with the autocast of ``--amp``.

It prints the break-even: the training images after which the time saved per image has paid the cold and the
warm compilation (``cil_train.compilation``'s ``auto`` rule uses such figures).

    hatch run bench compile                                  # ResNet-32, batch 128, 3×32×32
    hatch run bench compile --backbone resnet8 --batch-size 64 --channels 1 --image-size 28 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _amp_dtype(amp: str) -> torch.dtype | None:
    from cil_train.devices import resolve_amp

    return resolve_amp(amp, torch.device("cpu"))


def _net(args: argparse.Namespace):
    from cil_models import IncrementalNet

    torch.manual_seed(0)
    net = IncrementalNet(args.backbone, in_channels=args.channels).to(memory_format=torch.channels_last)
    net.expand(10)
    return net


def _batch(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, args.channels, args.image_size, args.image_size, generator=g)
    return x.contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (n,), generator=g)


def _step(net, opt, x, y, amp) -> None:
    net.train()
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        loss = torch.nn.functional.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _eval(net, x, amp) -> None:
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        net(x)


def compile_sequence(args: argparse.Namespace) -> dict[str, float]:
    """What one run compiles, timed item by item (run in a child process)."""
    from cil_train.compilation import compile_extractors

    amp = _amp_dtype(args.amp)
    net = _net(args)
    sizes = {args.batch_size, args.eval_batch_size}  # what the trainer registers: full batches, evaluation chunks
    compile_extractors(net, sizes)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    times: dict[str, float] = {}

    def timed(label, fn):
        start = time.perf_counter()
        fn()
        times[label] = time.perf_counter() - start

    timed("train step", lambda: _step(net, opt, *_batch(args, args.batch_size), amp))
    timed("train, last short batch", lambda: _step(net, opt, *_batch(args, max(1, args.batch_size // 2 - 3)), amp))
    timed("eval batch", lambda: _eval(net, _batch(args, args.eval_batch_size)[0], amp))
    timed("eval remainder", lambda: _eval(net, _batch(args, max(1, args.eval_batch_size // 3 - 1))[0], amp))
    teacher = net.frozen_copy()
    compile_extractors(teacher, sizes)
    timed("teacher", lambda: _eval(teacher, _batch(args, args.batch_size)[0], amp))
    # what is left once compiled: the same calls again
    timed("train step (again)", lambda: _step(net, opt, *_batch(args, args.batch_size), amp))
    return times


def _child(args: argparse.Namespace, cache: str) -> dict[str, float]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    cmd = [sys.executable, __file__, "--child", "--backbone", args.backbone, "--batch-size", str(args.batch_size),
           "--eval-batch-size", str(args.eval_batch_size), "--image-size", str(args.image_size),
           "--channels", str(args.channels), "--amp", args.amp, "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def gain(args: argparse.Namespace) -> dict[str, float]:
    from cil_train.compilation import compile_extractors

    amp = _amp_dtype(args.amp)
    eager, compiled = _net(args), _net(args)
    compile_extractors(compiled, {args.batch_size})
    opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for n in (eager, compiled)]
    x, y = _batch(args, args.batch_size)
    for net, opt in zip((eager, compiled), opts):  # compile (warm cache) and warm up
        _step(net, opt, x, y, amp)
        _step(net, opt, x, y, amp)
    spent = [0.0, 0.0]
    for _ in range(args.steps):
        for k, (net, opt) in enumerate(zip((eager, compiled), opts)):
            start = time.perf_counter()
            _step(net, opt, x, y, amp)
            spent[k] += time.perf_counter() - start
    n = args.steps * args.batch_size
    return {"eager_img_s": n / spent[0], "compiled_img_s": n / spent[1], "ratio": spent[0] / spent[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compilation cost (cold/warm cache) and gain per training step.")
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--steps", type=int, default=20, help="timed training steps of each network")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(compile_sequence(args)))
        return 0
    amp = _amp_dtype(args.amp)
    print(f"{args.backbone}, batch {args.batch_size}, {args.channels}×{args.image_size}×{args.image_size}, "
          f"{'bf16 autocast' if amp else 'float32'}, {torch.get_num_threads()} threads, torch {torch.__version__}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="cil-inductor-") as cache:
        cold = _child(args, cache)
        print(f"cold cache: {sum(v for k, v in cold.items() if 'again' not in k):.1f} s "
              f"({', '.join(f'{k} {v:.1f}' for k, v in cold.items())})", flush=True)
        warm = _child(args, cache)
        print(f"warm cache: {sum(v for k, v in warm.items() if 'again' not in k):.1f} s "
              f"({', '.join(f'{k} {v:.1f}' for k, v in warm.items())})", flush=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        g = gain(args)
    cost = {name: sum(v for k, v in t.items() if "again" not in k) for name, t in (("cold", cold), ("warm", warm))}
    saved = 1 / g["eager_img_s"] - 1 / g["compiled_img_s"]
    even = {name: (c / saved if saved > 0 else None) for name, c in cost.items()}
    print(f"training step: eager {g['eager_img_s']:.0f} img/s, compiled {g['compiled_img_s']:.0f} img/s, "
          f"{g['ratio']:.2f}×")
    for name in ("cold", "warm"):
        print(f"break-even ({name} cache, {cost[name]:.0f} s): "
              + (f"{even[name]:,.0f} training images" if even[name] else "never (compiled is not faster)"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
            "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
            "cold": cold, "warm": warm, "cost_s": cost, "gain": g, "break_even_images": even}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
