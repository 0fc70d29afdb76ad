"""Segmented (per task slice) log-softmax: layouts, values, gradients, gradcheck, launch counts."""

from __future__ import annotations

import pytest
import torch

import cil_losses as L
from cil_losses.errors import LossArgumentError, LossTypeError
from cil_losses.segments import MAX_RUNS, SegmentedLogSoftmaxFunction, parse_boundaries, segment_plan

LAYOUTS = {
    "equal": [0, 3, 6, 9, 12],
    "base+equal": [0, 6, 8, 10, 12],
    "one-class-per-task": [0, 1, 2, 3, 4, 5],
    "single": [0, 7],
    "ragged": [0, 1, 4, 6, 7, 12, 14, 17],  # more runs than MAX_RUNS: padded path
}


def test_ragged_layout_takes_the_padded_path():
    assert len(segment_plan(tuple(LAYOUTS["ragged"])).runs) > MAX_RUNS
    assert segment_plan(tuple(LAYOUTS["ragged"])).padded
    assert segment_plan(tuple(LAYOUTS["base+equal"])).runs == ((0, 1, 6), (6, 3, 2))
    assert not segment_plan(tuple(LAYOUTS["equal"])).padded


@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_and_gradients_match_per_slice_loop(layout, gen, rand, ref, grad_of, close):
    b = LAYOUTS[layout]
    z = rand(gen, 5, b[-1], grad=True)
    upstream = rand(gen, 5, b[-1])
    out = L.segmented_log_softmax(z, b)
    expected = ref.log_softmax_per_slice(z, b)
    close(out, expected)
    close(grad_of((out * upstream).sum(), z)[0], grad_of((expected * upstream).sum(), z)[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(layout):
    b = LAYOUTS[layout]
    z = torch.randn(3, b[-1], dtype=torch.float64, requires_grad=True)
    plan = segment_plan(tuple(b))
    assert torch.autograd.gradcheck(lambda x: SegmentedLogSoftmaxFunction.apply(x, plan), (z,))


@pytest.mark.parametrize("layout", ["equal", "ragged"])
def test_huge_logits_stay_finite(layout, ref, close):
    b = LAYOUTS[layout]
    z = (torch.randint(0, 2, (4, b[-1]), generator=torch.Generator().manual_seed(0)).double() * 2 - 1) * 1e4
    z.requires_grad_(True)
    out = L.segmented_log_softmax(z, b)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
    close(out, ref.log_softmax_per_slice(z, b))


def test_batch_of_one(ref, close):
    z = torch.randn(1, 12, dtype=torch.float64)
    close(L.segmented_log_softmax(z, LAYOUTS["ragged"][:4] + [12]), ref.log_softmax_per_slice(z, [0, 1, 4, 6, 12]))


def test_boundaries_as_tensor(ref, close):
    z = torch.randn(2, 12, dtype=torch.float64)
    close(L.segmented_log_softmax(z, torch.tensor(LAYOUTS["equal"])), ref.log_softmax_per_slice(z, LAYOUTS["equal"]))


@pytest.mark.parametrize(
    "bad, error",
    [
        ([1, 3], LossArgumentError),        # does not start at 0
        ([0, 3, 3], LossArgumentError),     # empty slice
        ([0, 4, 2], LossArgumentError),     # decreasing
        ([], LossArgumentError),
        ([0, 2.5], LossTypeError),
        ([0, True], LossTypeError),
        (torch.tensor([0.0, 2.0]), LossTypeError),
        ("0,2", LossTypeError),
    ],
)
def test_bad_boundaries_are_rejected(bad, error):
    with pytest.raises(error, match="boundaries"):
        parse_boundaries(bad)


def test_boundaries_must_end_at_the_number_of_columns():
    with pytest.raises(LossArgumentError, match="number of logit columns"):
        L.segmented_log_softmax(torch.randn(2, 5), [0, 2, 4])


def _aten_calls(fn) -> int:
    """Number of aten operator calls made by ``fn`` (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.calls


@pytest.mark.parametrize("padded", [False, True], ids=["runs", "padded"])
def test_launch_count_does_not_grow_with_the_number_of_tasks(padded):
    def layout(tasks: int) -> list[int]:
        if not padded:
            return [2 * s for s in range(tasks + 1)]
        sizes = [1 + (s % 3) for s in range(tasks)]  # 1,2,3,1,2,3,...: a run per slice
        return [0] + torch.tensor(sizes).cumsum(0).tolist()

    def step(b):
        z = torch.randn(4, b[-1], requires_grad=True)
        t = torch.randn(4, b[-1])

        def run():
            L.task_wise_kd(z, t, b).backward()
            L.segmented_log_softmax(z, b).sum().backward()
        return run

    few, many = layout(MAX_RUNS + 2), layout(40)
    assert segment_plan(tuple(few)).padded == padded == segment_plan(tuple(many)).padded
    assert _aten_calls(step(few)) == _aten_calls(step(many))
