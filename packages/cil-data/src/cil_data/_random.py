"""Turning the seeds and generators that callers pass into torch generators (no global RNG state)."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .errors import DataError

__all__ = ["as_generator", "randperm", "rand"]


def as_generator(seed: int | torch.Generator | np.random.Generator, name: str = "seed") -> torch.Generator:
    """A ``torch.Generator`` from an int seed (a fresh CPU generator), a torch generator (used as is,
    its state advances) or a numpy ``Generator`` (one 63-bit draw from it seeds a fresh CPU generator)."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, np.random.Generator):
        return torch.Generator().manual_seed(int(seed.integers(0, 2**63 - 1)))
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise DataError(
            f"{name} must be an int seed, a torch.Generator or a numpy.random.Generator, got {seed!r}"
        )
    return torch.Generator().manual_seed(int(seed) % 2**64)


def randperm(n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.randperm`` drawn on the generator's device, returned on ``device``."""
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) float32 draws on the generator's device, returned on ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)
