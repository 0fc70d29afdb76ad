"""Per-channel mean and standard deviation of uint8 images, exact and memory-bounded.

A 256-bin histogram per channel (accumulated chunk by chunk) gives the exact statistics on the 0..1
scale without converting the whole set to float: ``mean = Σ_v h(v)·v / (255·N)``,
``std = sqrt(Σ_v h(v)·(v/255 − mean)² / N)`` (population standard deviation).
"""

from __future__ import annotations

import torch

from .errors import DataError

__all__ = ["channel_stats"]

_CHUNK_PIXELS = 1 << 24


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of uint8 images ``[N, C, H, W]`` on the 0..1 scale."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise DataError("channel_stats needs a non-empty uint8 tensor [N, C, H, W]")
    n, c = images.shape[:2]
    per_image = max(1, images[0].numel())
    step = max(1, _CHUNK_PIXELS // per_image)
    offsets = (torch.arange(c, device=images.device) * 256).view(1, c, 1)
    hist = torch.zeros(c * 256, dtype=torch.int64, device=images.device)
    for lo in range(0, n, step):  # chunks of images, bounded memory
        chunk = images[lo : lo + step].reshape(min(step, n - lo), c, -1).to(torch.int64) + offsets
        hist += torch.bincount(chunk.flatten(), minlength=c * 256)
    hist = hist.view(c, 256).double().cpu()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = hist.sum(1)
    mean = (hist * values).sum(1) / total
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(1) / total
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-12)) for s in var.sqrt())
