"""cil-train: a stage that trains the classifier only, with and without the backward through the frozen backbone.

    hatch run bench partial                  # ResNet-32, batch 128, 32×32, bf16 autocast where the CPU has it
    hatch run bench partial --quick          # a few-second smoke run (ResNet-8, batch 16)
    hatch run bench partial --threads 2 --repeats 7 --json out.json

LUCIR's and PODNet's classifier finetuning, DER's balanced classifier stage and BiC's bias correction train a
small part of the network. The loop turns ``requires_grad`` off for the rest of the network during such a stage
(``cil_train.stages.frozen_outside``); before, every step also back-propagated through the whole backbone for
gradients no optimiser read. Rows (one training step: forward in training mode, cross-entropy, backward, SGD
step on the head):
  whole    every parameter requires gradients (the reference: the loop before ``frozen_outside``);
  head     the backbone frozen by ``frozen_outside`` for the step, as the loop does now.
The two are timed interleaved (rounds alternate the order); "paired" is the median over rounds of the ratio
whole/head within a round (robust to a load that changes between rounds). The head's gradients of the two
agree (checked, max |diff| printed). Compare ratios across machines, not times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cil_models import build_backbone
from cil_train.devices import resolve_amp
from cil_train.stages import frozen_outside

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import interleaved_times  # noqa: E402  (the alternating-order rounds of bench models)


def make_step(backbone: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, freeze: bool,
              amp: bool):
    """One optimiser step on the head; ``freeze``: the backbone out of the backward (``frozen_outside``)."""
    params = list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model = torch.nn.Sequential(backbone, head)

    def step() -> torch.Tensor:
        with frozen_outside(model, params) if freeze else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(head(backbone(x)).float(), y)
            loss.backward()
            grad = head.weight.grad.detach().clone()
            opt.step()
        return grad

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench partial", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-8, batch 16, one repeat (smoke test)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--steps", type=int, default=5, help="steps per row and round")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                        help="bf16 autocast (auto: where the CPU has fast bf16, as the loop's default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.batch, args.repeats, args.steps = "resnet8", 16, 1, 1
    torch.set_num_threads(args.threads)
    amp = resolve_amp(args.amp, torch.device("cpu")) is not None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone).to(memory_format=torch.channels_last).train()
    dim = int(backbone(x[:2]).shape[1])
    head = torch.nn.Linear(dim, args.classes)
    state = [{k: v.clone() for k, v in module.state_dict().items()} for module in (backbone, head)]

    def reset() -> None:  # both rows start from the same weights and running statistics
        backbone.load_state_dict(state[0])
        head.load_state_dict(state[1])

    steps = {name: make_step(backbone, head, x, y, name == "head", amp) for name in ("whole", "head")}
    grads = {}
    for name, step in steps.items():  # warm-up and the gradients' check
        reset()
        grads[name] = step()
    diff = (grads["whole"] - grads["head"]).abs().max().item()
    rounds = {name: (lambda _x, step=step: [step() for _ in range(args.steps)]) for name, step in steps.items()}
    times = {name: [t / args.steps for t in ts] for name, ts in interleaved_times(rounds, x, args.repeats).items()}
    med = {name: statistics.median(ts) for name, ts in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["whole"], times["head"]))
    print(f"classifier-only step: {args.backbone}, batch {args.batch}, {args.size}x{args.size}, "
          f"{args.threads} threads, bf16 autocast {'on' if amp else 'off'}, channels_last, "
          f"median of {args.repeats} rounds of {args.steps} steps")
    print(f"{'row':<6} {'ms/step':>9} {'img/s':>8}")
    for name in steps:
        print(f"{name:<6} {med[name] * 1e3:>9.1f} {args.batch / med[name]:>8.0f}")
    print(f"whole/head {med['whole'] / med['head']:.2f}× (paired {paired:.2f}×); head gradient max |diff| {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json), "amp": amp},
                                         "results": {"whole_s": med["whole"], "head_s": med["head"],
                                                     "whole_over_head": med["whole"] / med["head"],
                                                     "paired_whole_over_head": paired, "max_abs_diff": diff}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
