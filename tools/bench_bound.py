"""Convolution bound: how fast a training step with a teacher could be if everything but its convolutions were free.

A phase with a teacher (iCaRL's, PyCIL's ``_update_representation``) runs, per batch, the student's forward and
backward and the teacher's forward. This benchmark times, on the same synthetic batch, interleaved (round-robin
over the rows, ``--repeats`` rounds, median per row):

* **step** — the step as cil-train runs it: channels_last input, the run's autocast (``--amp auto``: bf16 where
  the CPU has it), the teacher a folded frozen copy forwarded without a graph, cross-entropy + KD, SGD;
* **step, no teacher** — the same without the teacher;
* **step with a teacher, compiled** (with ``--compile``) — the student's and the teacher's extractors compiled
  with ``torch.compile`` (compilation excluded: it runs in the warm-up);
* **convolutions alone** — only the network's convolutions, each on an input of the shape and dtype it sees in
  the step (recorded from one forward), the student's with their backward (weights and inputs), the teacher's
  forward only; no batch norm, ReLU, residual add, head, loss or optimiser. This is the bound the convolution
  kernels (oneDNN on a CPU) set for any loop that runs the same network at the same precision;
* **reference with a teacher** (unless ``--no-reference``) — ``bench loop``'s plain loop (DataLoader + per-image
  transforms, float32) with a teacher on the embedded data, the baseline of the speed goal.

    hatch run bench bound                              # ResNet-32, 1×28×28, batch 128
    hatch run bench bound --compile --json bench-results/bound.json
    hatch run bench bound --backbone resnet18 --shape 3,32,32 --no-reference
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import cil_data
from cil_models import IncrementalNet, fold_batch_norms
from cil_train.devices import resolve_amp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_loop  # noqa: E402  (the reference loop)
from bench_models import interleaved_times  # noqa: E402  (the alternating-order rounds of bench models)


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def _network(backbone: str, shape: tuple[int, int, int], classes: int) -> IncrementalNet:
    torch.manual_seed(0)
    net = IncrementalNet(backbone, in_channels=shape[0])
    net.expand(classes)
    return net.to_channels_last()


def full_step(backbone: str, shape: tuple[int, int, int], batch: int, amp: torch.dtype | None,
              teacher: bool, compiled: bool = False) -> Callable[[], None]:
    """One training step as the loop runs it (see the module docstring); ``compiled``: the student's and the
    teacher's feature extractors compiled (``torch.compile``, static shapes, as ``--compile on``)."""
    classes = 10
    net = _network(backbone, shape, classes)
    old = fold_batch_norms(net) if teacher else None
    if compiled:
        for extractor in net.extractors + (old.extractors if old is not None else []):
            extractor.compile(dynamic=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    net.train()

    def step() -> None:
        with _autocast(amp):
            logits = net(x).float()
            loss = F.cross_entropy(logits, y)
            if old is not None:
                with torch.no_grad():
                    target = F.softmax(old(x).float() / 2.0, dim=1)
                loss = loss + F.kl_div(F.log_softmax(logits / 2.0, dim=1), target, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def convolutions_of(net: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> list[tuple[nn.Conv2d, torch.Size,
                                                                                           torch.dtype]]:
    """Every convolution a forward of ``net`` on ``x`` calls, with its input's shape and dtype, in call order."""
    seen: list[tuple[nn.Conv2d, torch.Size, torch.dtype]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].shape, args[0].dtype)))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with _autocast(amp), torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _teacher_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A frozen copy with a bias, as a folded teacher's convolution (the batch norm's shift moved into it)."""
    folded = copy.deepcopy(conv).requires_grad_(False)
    folded.bias = nn.Parameter(torch.zeros(conv.out_channels), requires_grad=False)
    return folded.eval()


def convolutions_step(backbone: str, shape: tuple[int, int, int], batch: int, amp: torch.dtype | None,
                      teacher: bool) -> Callable[[], None]:
    """The step's convolutions alone: the student's forward and backward, the teacher's forward."""
    net = _network(backbone, shape, 10)
    return convolutions_of_step(net, torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last), amp,
                                teacher)


def convolutions_of_step(net: nn.Module, x: torch.Tensor, amp: torch.dtype | None,
                         teacher: bool) -> Callable[[], None]:
    """:func:`convolutions_step` for the convolutions of ``net`` on batches shaped as ``x``."""
    convs = convolutions_of(net, x, amp)
    inputs = [torch.randn(s).to(d).contiguous(memory_format=torch.channels_last).requires_grad_(i > 0)
              for i, (_, s, d) in enumerate(convs)]
    old = [_teacher_conv(c) for c, _, _ in convs] if teacher else []
    old_inputs = [t.detach() for t in inputs]

    def step() -> None:
        with _autocast(amp):
            outs = [conv(inp) for (conv, _, _), inp in zip(convs, inputs)]
            if old:
                with torch.no_grad():
                    for conv, inp in zip(old, old_inputs):
                        conv(inp)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        for conv, _, _ in convs:
            conv.weight.grad = None
        for inp in inputs:
            inp.grad = None

    return step


def _median_seconds(rows: dict[str, Callable[[], None]], steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each row: ``repeats`` rounds of ``steps`` steps (:func:`bench_models.
    interleaved_times`: one warm-up round, then the rows' order alternates from round to round)."""
    times = interleaved_times({name: (lambda _x, fn=fn: [fn() for _ in range(steps)]) for name, fn in rows.items()},
                              None, repeats)
    return {name: statistics.median(t) / steps for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--shape", default="1,28,28", help="C,H,W of the images (default 1,28,28: the embedded data)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amp", choices=["auto", "off"], default="auto")
    p.add_argument("--steps", type=int, default=5, help="steps per timing (default 5)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5; the median is kept)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="add the compiled step with a teacher (compiles first: "
                   "seconds to a minute, depending on the inductor cache)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loop (needs the embedded data)")
    p.add_argument("--reference-images", type=int, default=6000)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true", help="a smoke run: ResNet-8, batch 16, 1 step, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.batch_size, args.steps, args.repeats, args.reference_images = "resnet8", 16, 1, 1, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3:
        p.error(f"--shape must be C,H,W, got {args.shape!r}")
    amp = resolve_amp(args.amp, torch.device("cpu"))
    b = args.batch_size
    rows = {
        "step with a teacher": full_step(args.backbone, shape, b, amp, teacher=True),
        "its convolutions alone": convolutions_step(args.backbone, shape, b, amp, teacher=True),
        "step, no teacher": full_step(args.backbone, shape, b, amp, teacher=False),
        "its convolutions alone, no teacher": convolutions_step(args.backbone, shape, b, amp, teacher=False),
    }
    if args.compile:
        rows["step with a teacher, compiled"] = full_step(args.backbone, shape, b, amp, teacher=True, compiled=True)
    seconds = _median_seconds(rows, args.steps, args.repeats)
    results = {name: {"ms_per_step": s * 1e3, "img_per_s": b / s} for name, s in seconds.items()}
    reference = None
    if not args.no_reference:
        ds = cil_data.load_embedded()
        if tuple(ds.image_shape) != shape:
            p.error(f"the reference loop runs on the embedded data ({ds.image_shape}); pass --shape "
                    f"{','.join(map(str, ds.image_shape))} or --no-reference")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            npz = bench_loop._subset_npz(ds, min(args.reference_images, len(ds.train_labels)), Path(tmp))
            sub = cil_data.load_npz(npz)
            reference = bench_loop.reference_loop(sub, args.backbone, 1, b, args.workers, 0, teacher=True)
    precision = str(amp).replace("torch.", "") if amp else "float32"
    print(f"convolution bound: {args.backbone}, batch {b}, images {'×'.join(map(str, shape))}, {precision}, "
          f"channels_last, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"median of {args.repeats} interleaved rounds of {args.steps} steps")
    print("| row | ms per step | images/s | × reference with a teacher |\n|---|---:|---:|---:|")
    ref_rate = reference["img_per_s"] if reference else None
    if reference:
        print(f"| reference loop with a teacher (DataLoader, float32) | {b / ref_rate * 1e3:.1f} | {ref_rate:.0f} | "
              f"1.00× |")
    for name, r in results.items():
        ratio = f"{r['img_per_s'] / ref_rate:.2f}×" if ref_rate else "—"
        r["ratio_to_reference_with_teacher"] = r["img_per_s"] / ref_rate if ref_rate else None
        print(f"| {name} | {r['ms_per_step']:.1f} | {r['img_per_s']:.0f} | {ratio} |")
    share = seconds["its convolutions alone"] / seconds["step with a teacher"]
    print(f"the convolutions are {share:.0%} of the step with a teacher's time: with everything else free the step "
          f"would be {1 / share:.2f}× faster")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "bound", "backbone": args.backbone, "shape": list(shape), "batch_size": b,
            "precision": precision, "threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats,
            "reference_with_teacher": reference, "results": results, "convolution_share": share,
            "torch": torch.__version__, "python": sys.version.split()[0],
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
