"""Loop speed: cil-train's phase loop against a plain reference loop, same ResNet-32, batch and data.

The reference is written as common toolkits write it: a ``DataLoader`` over numpy images with
per-image torchvision transforms (``RandomCrop(padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
``Normalize``) in ``--workers`` worker processes, default memory format, float32. Ours is the real
``cil_train`` Trainer running one phase with every class (fine-tuning, no memory, no checkpoints),
in several configurations: float32 NCHW (the data path alone), channels_last, channels_last + bf16
autocast (the CPU default where the hardware supports bf16), and optionally ``torch.compile``.
Both sides are timed from the first training step to the end of the last epoch (warm-up included,
evaluation excluded), and report images per second; ratios are against the reference of the same run.

    hatch run bench loop                       # embedded Fashion-MNIST subset (6,000 images), 2 epochs
    hatch run bench loop --compile --json bench-results/loop.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cil_data
from cil_models import IncrementalNet
from cil_train import RunConfig
from cil_train.devices import resolve_device
from cil_train.distributed import DistInfo
from cil_train.loop import Trainer


def _subset_npz(ds: cil_data.ImageDataset, n: int, folder: Path) -> Path:
    g = np.random.default_rng(0)
    idx = np.sort(g.permutation(len(ds.train_labels))[:n])
    path = folder / "bench.npz"
    x_tr, x_te = ds.train_images[idx], ds.test_images[:200]
    if x_tr.shape[1] == 1:  # npz holds grey images as [N, H, W]
        x_tr, x_te = x_tr[:, 0], x_te[:, 0]
    else:
        x_tr, x_te = x_tr.permute(0, 2, 3, 1), x_te.permute(0, 2, 3, 1)
    np.savez(path, x_train=x_tr.numpy(), y_train=ds.train_labels[idx].numpy(), x_test=x_te.numpy(),
             y_test=ds.test_labels[:200].numpy(), classes=np.array(ds.class_names))
    return path


def bench_device(name: str) -> torch.device:
    """``--device`` of a benchmark (``auto``: CUDA where there is one), as ``cil-train`` resolves it."""
    return resolve_device(name, DistInfo())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer must not stop before its kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's as platform reports it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


class _PerImage(torch.utils.data.Dataset):
    """Numpy images through per-image PIL transforms, as in PyCIL / FACIL / Avalanche loops."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_loop(ds: cil_data.ImageDataset, backbone: str, epochs: int, batch_size: int, workers: int,
                   seed: int, teacher: bool = False, device: torch.device | str = "cpu") -> dict:
    """The plain loop; ``teacher=True`` adds what an incremental phase of iCaRL adds in such a loop (PyCIL's
    ``_update_representation``): a frozen copy of the network forwarded under ``no_grad`` on the same batch and
    a temperature-2 KD term on its logits. On a GPU the network lives there and each batch is copied there from
    pinned memory, as such loops do (``x.to(device)``)."""
    device = torch.device(device)
    from torchvision import transforms

    size = ds.image_shape[1]
    tf = transforms.Compose([
        transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(ds.mean, ds.std),
    ])
    images = ds.train_images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # HW (grey) or HWC
    loader = torch.utils.data.DataLoader(_PerImage(images, ds.train_labels.numpy(), tf), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(seed)
    net = IncrementalNet(backbone, in_channels=ds.image_shape[0])
    net.expand(ds.num_classes)
    net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    old = copy.deepcopy(net).eval() if teacher else None
    net.train()
    n = 0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            if old is not None:
                with torch.no_grad():
                    target = F.softmax(old(x) / 2.0, dim=1)
                loss = loss + F.kl_div(F.log_softmax(logits / 2.0, dim=1), target, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "img_per_s": n / seconds}


def our_loop(npz: Path, num_classes: int, backbone: str, epochs: int, batch_size: int, seed: int, amp: str, channels_last: bool,
             compile_: bool, out: Path, device: str) -> dict:
    cfg = RunConfig(
        method="finetune", data="npz", data_root=str(npz), imbalance=1.0, increments=(num_classes,), memory_per_class=0,
        backbone=backbone, epochs=epochs, batch_size=batch_size, lr_schedule="constant", seed=seed, amp=amp,
        channels_last=channels_last, compile=compile_, checkpoint_every=0, plots=False, progress="none",
        out=str(out), device=device,
    )
    trainer = Trainer(cfg, out, log=lambda _m: None)
    trainer.run()
    rec = trainer.records[0]
    n = rec["train_images"] * epochs
    return {"images": n, "seconds": rec["train_seconds"], "img_per_s": n / rec["train_seconds"], "acc": rec["acc"],
            "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "float32"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--npz", type=Path, help="take the images from this npz (x_train, y_train, ...) instead of the "
                   "embedded Fashion-MNIST subset, e.g. ../shared/data/glyphs100.npz")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="DataLoader workers of the reference (default: the cores, at most 2)")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--quick", action="store_true", help="a few-second smoke run (512 images, ResNet-8, 1 epoch)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.backbone, args.epochs = 512, "resnet8", 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_device(args.device)
    ds_full = cil_data.load_npz(args.npz) if args.npz else cil_data.load_embedded()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz = _subset_npz(ds_full, min(args.images, len(ds_full.train_labels)), tmp)
        data_name = ds_full.name
        ds = cil_data.load_npz(npz)
        results["reference (DataLoader + per-image transforms, fp32 NCHW)"] = reference_loop(
            ds, args.backbone, args.epochs, args.batch_size, args.workers, args.seed, device=device)
        variants = [("ours fp32 NCHW", "off", False, False), ("ours channels_last", "off", True, False),
                    ("ours channels_last + autocast (default)", "auto", True, False)]
        if args.compile:
            variants.append(("ours channels_last + autocast + compile", "auto", True, True))
        for i, (name, amp, cl, comp) in enumerate(variants):
            results[name] = our_loop(npz, ds.num_classes, args.backbone, args.epochs, args.batch_size, args.seed, amp, cl, comp,
                                     tmp / f"run{i}", args.device)
    ref = next(iter(results.values()))["img_per_s"]
    print(f"loop speed: {args.backbone}, batch {args.batch_size}, {args.images} {data_name} images "
          f"{'×'.join(map(str, ds_full.image_shape))} × {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads, {device_name(device)}")
    print(f"| loop | images/s | ratio to reference |\n|---|---:|---:|")
    for name, r in results.items():
        label = name + (f" [{r['amp']}]" if "amp" in r else "")
        print(f"| {label} | {r['img_per_s']:.0f} | {r['img_per_s'] / ref:.2f}× |")
        r["ratio"] = r["img_per_s"] / ref
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "loop", "data": data_name, "image_shape": list(ds_full.image_shape), "backbone": args.backbone, "batch_size": args.batch_size, "images": args.images,
            "epochs": args.epochs, "threads": torch.get_num_threads(), "workers": args.workers,
            "device": str(device), "device_name": device_name(device), "torch": torch.__version__, "python": sys.version.split()[0],
            "results": results,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
