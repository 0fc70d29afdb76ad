"""Evaluation and feature extraction: images/s of cil-train's Extractor by batch size, batch norms folded or not.

    hatch run bench eval                          # ResNet-32, 6,000 embedded images, batch 64..2048, both forms
    hatch run bench eval --sizes 256,512,1024 --amp off --json bench-results/eval.json
    hatch run bench eval --quick                  # a few-second smoke run
    hatch run bench eval --backbone resnet8 --threads 1 --npz ../shared/data/glyphs100.npz   # 1×32×32 images

What a run's evaluation and herding do: uint8 images → normalised, channels_last input → features and logits
under the run's autocast (``--amp auto``: bf16 where the CPU has it), no graph, in chunks of
``--eval-batch-size``. The reference is the form before ``--fold-bn``: batch 512 with the stored batch norms,
timed in the same run; every row gives its ratio to it. Rows are timed interleaved (round-robin over the rows,
``--repeats`` rounds, median per row), so a load that changes during the run hits every row alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import cil_data
from cil_models import IncrementalNet
from cil_train.devices import resolve_amp
from cil_train.evaluation import Extractor


def _extractor(batch: int, fold: bool, amp: torch.dtype | None, mean, std) -> Extractor:
    """The Extractor as a run builds it: the run's normalisation (``BatchAugment.normalize``), channels_last."""
    normalize = cil_data.BatchAugment.from_policy("none", mean, std, channels_last=True).normalize

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()

    return Extractor(torch.device("cpu"), batch, normalize, autocast, fold_bn=fold)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--npz", type=Path, help="an npz instead of the embedded data (e.g. ../shared/data/glyphs100.npz)")
    p.add_argument("--images", type=int, default=6000, help="images extracted per timing (default 6000)")
    p.add_argument("--sizes", default="64,128,256,512,1024,2048", help="batch sizes (comma-separated)")
    p.add_argument("--amp", choices=("auto", "off"), default="auto",
                   help="as a run's --amp: auto = bf16 autocast on CPUs with AMX / AVX-512-bf16, off = float32")
    p.add_argument("--what", choices=("logits", "features", "both"), default="both")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true", help="a smoke run: 300 images, ResNet-8, sizes 64,512, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.backbone, args.sizes, args.repeats = 300, "resnet8", "64,512", 1
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = resolve_amp(args.amp, torch.device("cpu"))
    ds = cil_data.load_npz(args.npz) if args.npz else cil_data.load_embedded()
    images = ds.train_images[: args.images]
    torch.manual_seed(0)
    model = IncrementalNet(args.backbone, in_channels=images.shape[1])
    model.expand(10)
    model = model.to_channels_last().eval()
    rows = [(512, False)] + [(b, f) for b in map(int, args.sizes.split(",")) for f in (False, True)
                             if (b, f) != (512, False)]
    extractors = {row: _extractor(row[0], row[1], amp, ds.mean, ds.std) for row in rows}
    times: dict[tuple[int, bool], list[float]] = {row: [] for row in rows}
    for row in rows:  # warm-up: every chunk shape once
        extractors[row](model, images, args.what)
    for _ in range(args.repeats):
        for row in rows:
            start = time.perf_counter()
            extractors[row](model, images, args.what)
            times[row].append(time.perf_counter() - start)
    ref = len(images) / statistics.median(times[rows[0]])
    print(f"extraction ({args.what}): {args.backbone}, {len(images)} images {'×'.join(map(str, ds.image_shape))}, "
          f"{'bf16 autocast' if amp else 'float32'}, channels_last, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; reference: batch 512, batch norms stored")
    print("| batch | batch norms | images/s | × reference |\n|---:|---|---:|---:|")
    results = []
    for row in sorted(rows):
        speed = len(images) / statistics.median(times[row])
        results.append({"batch": row[0], "fold_bn": row[1], "img_per_s": speed, "ratio": speed / ref})
        print(f"| {row[0]} | {'folded' if row[1] else 'stored'} | {speed:.0f} | {speed / ref:.2f}× |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "eval", "backbone": args.backbone, "images": len(images),
                                         "image_shape": list(ds.image_shape),
                                         "amp": "bf16" if amp else "float32", "what": args.what,
                                         "threads": torch.get_num_threads(), "torch": torch.__version__,
                                         "reference_img_per_s": ref, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
