"""Plain reference implementations shared by the tests and tools/bench_data.py (loaded by path)."""

from __future__ import annotations

import torch


def reference_herding(features: torch.Tensor, k: int) -> list[int]:
    """iCaRL herding written plainly: for every step, try every unchosen sample."""
    f = features / features.norm(dim=1, keepdim=True)
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    for step in range(1, min(k, len(f)) + 1):
        best, best_dist = -1, float("inf")
        for j in range(len(f)):
            if j in chosen:
                continue
            dist = float((mu - (total + f[j]) / step).norm())
            if dist < best_dist:
                best, best_dist = j, dist
        chosen.append(best)
        total = total + f[best]
    return chosen
