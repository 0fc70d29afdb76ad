"""Shared helpers of the cil-losses tests: the plain reference implementations and small utilities."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def _load_references():
    name = "cil_losses_test_references"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("references.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ref():
    """The module of plain reference implementations (tests/references.py)."""
    return _load_references()


@pytest.fixture(params=[0, 1, 2], ids=lambda s: f"seed{s}")
def gen(request) -> torch.Generator:
    """A seeded CPU generator; tests using it run for three seeds."""
    return torch.Generator().manual_seed(1000 + request.param)


def randn(gen: torch.Generator, *shape: int, scale: float = 3.0, dtype=torch.float64, grad: bool = False):
    t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return t.requires_grad_(grad)


@pytest.fixture(scope="session")
def rand():
    """``rand(gen, *shape, scale=3.0, dtype=float64, grad=False)``: seeded normal tensor."""
    return randn


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = torch.autograd.grad(loss, inputs, allow_unused=True)
    return tuple(torch.zeros_like(i) if g is None else g for i, g in zip(inputs, out))


@pytest.fixture(scope="session")
def grad_of():
    """``grad_of(loss, *inputs)``: gradients (zeros for unused inputs)."""
    return grads


def assert_close(actual, expected, atol=1e-9, rtol=1e-7):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.fixture(scope="session")
def close():
    """``close(actual, expected, atol=1e-9, rtol=1e-7)``."""
    return assert_close
