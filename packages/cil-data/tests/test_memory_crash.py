"""A writer killed with SIGKILL at random moments never leaves a memory file that fails to load."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from cil_data import ExemplarMemory, MemoryBudget

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and SIGKILL")


def _memory(seed: int, n: int = 600) -> ExemplarMemory:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    mem = ExemplarMemory(MemoryBudget.per_class(n), "random", seed=seed)
    mem.update(images, labels, None, 3)
    mem.class_order = [2, 0, 1]
    return mem


def _spawn_writer(memories: list[ExemplarMemory], path: Path) -> int:
    """Fork a child that saves the memories to ``path`` in turn, forever (until killed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python ≥ 3.12 warns about fork with threads
        pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            i = 0
            while True:
                memories[i % len(memories)].save(path)
                i += 1
        finally:
            os._exit(1)
    return pid


def test_sigkill_during_save_leaves_old_or_new_memory(tmp_path: Path) -> None:
    old, new = _memory(0), _memory(1)
    path = tmp_path / "memory.h5"
    old.save(path)
    t0 = time.perf_counter()
    old.save(path)
    save_time = time.perf_counter() - t0
    rng = random.Random(1234)
    seen = {"old": 0, "new": 0}
    rounds = 0

    def mid_write_kills() -> int:  # a killed writer leaves its temporary file behind
        return sum(p.name.startswith("memory.h5.tmp-") for p in tmp_path.iterdir())

    # at least 25 kills; go on (up to 200) until kills hit both outcomes and several half-written files
    while rounds < 25 or (rounds < 200 and (min(seen.values()) == 0 or mid_write_kills() < 3)):
        pid = _spawn_writer([new, old], path)
        time.sleep(rng.uniform(0.0, 3 * save_time + 0.002))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        loaded = ExemplarMemory.load(path, expect_class_order=[2, 0, 1])
        if loaded.equals(old):
            seen["old"] += 1
        else:
            assert loaded.equals(new), "the file on disk is neither the old nor the new memory"
            seen["new"] += 1
        rounds += 1
    assert min(seen.values()) > 0 and mid_write_kills() >= 3, (seen, mid_write_kills())
    # leftover temporary files of killed writers never shadow the memory
    assert all(p.name == "memory.h5" or p.name.startswith("memory.h5.tmp-") for p in tmp_path.iterdir())
