"""Shared helpers of the cil-models tests (tiny models, seeded random inputs)."""

from __future__ import annotations

import pytest
import torch

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep each test on one intra-op thread: the machines running the suite are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def count_params():
    return param_count
