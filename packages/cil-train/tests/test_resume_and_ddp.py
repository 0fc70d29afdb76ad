"""A run killed with SIGKILL in the middle of a later phase resumes to the same final metrics;
two processes under torchrun (gloo, CPU) train two phases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cil_train.cli import main

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _checkpoint_state(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not written yet (it is replaced atomically, never seen half-written)
        return None


KILL_CASES = [
    # dgr: inside the last phase's (only) stage, after two checkpointed epochs
    pytest.param(("--epochs", "6", "--method", "dgr"), 0, 2, id="dgr-main-stage"),
    # podnet: inside its classifier finetuning, a stage that runs after the memory update
    pytest.param(("--epochs", "2", "--method", "podnet", "--podnet-proxies", "3", "--podnet-finetune-epochs", "6"),
                 1, 2, id="podnet-finetune-after-memory"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("options", "stage", "epochs_done"), KILL_CASES)
def test_sigkill_in_a_later_phase_then_resume_gives_identical_metrics(tiny_argv, strip_timings, tmp_path, options,
                                                                      stage, epochs_done):
    extra = ("--threads", "1", *options)
    reference = tmp_path / "uninterrupted"
    assert main(tiny_argv(reference, *extra)) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cil_train", *tiny_argv(killed, *extra)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    state = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = _checkpoint_state(killed / "checkpoint.pt")
            # the third (last) phase is under way: epochs of the stage are checkpointed
            if (state and state["phase"] == 2 and not state["phase_complete"] and state.get("stage", 0) == stage
                    and state["epochs_done"] >= epochs_done):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((killed / "metrics.json").read_text())["complete"] is False

    assert main(["--resume", str(killed), "--progress", "none"]) == 0
    got = json.loads((killed / "metrics.json").read_text())
    want = json.loads((reference / "metrics.json").read_text())
    assert strip_timings(got) == strip_timings(want), "\n".join(_differences(strip_timings(got), strip_timings(want))[:20])


@pytest.mark.slow
def test_resume_of_a_finished_phase_boundary(tiny_argv, strip_timings, tmp_path, monkeypatch):
    """Interrupted right after a phase ended (KeyboardInterrupt at the start of phase 3)."""
    from cil_train import loop

    extra = ("--epochs", "2", "--threads", "1", "--method", "ssil", "--ssil-batch-new", "16", "--ssil-batch-memory", "8")
    reference = tmp_path / "ref"
    assert main(tiny_argv(reference, *extra)) == 0
    original = loop.Trainer._run_phase

    def interrupt_at_phase_3(self, t, *args, **kwargs):
        if t == 2:
            raise KeyboardInterrupt
        return original(self, t, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "_run_phase", interrupt_at_phase_3)
    run = tmp_path / "run"
    assert main(tiny_argv(run, *extra)) == 130
    monkeypatch.setattr(loop.Trainer, "_run_phase", original)
    assert main(["--resume", str(run), "--progress", "none"]) == 0
    assert strip_timings(json.loads((run / "metrics.json").read_text())) == strip_timings(
        json.loads((reference / "metrics.json").read_text()))


@pytest.mark.slow
def test_two_processes_with_torchrun_gloo(tiny_argv, tmp_path):
    out = tmp_path / "ddp"
    argv = tiny_argv(out, "--phases", "2", "--increments", "2,4", "--epochs", "1", "--method", "icarl",
                     "--device", "cpu", "--threads", "1")
    i = argv.index("--phases")
    del argv[i : i + 2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cil_train", *argv]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 processes" in done.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and len(m["acc_per_phase"]) == 2
    assert sorted(p.name for p in (out / "memory").glob("*.h5")) == ["after_phase_02.h5"]
    assert sum(m["memory_per_class"]) == m["phases"][-1]["memory_after"]


def test_restore_generator_sets_a_state_of_the_same_kind():
    from cil_train.checkpoint import restore_generator

    saved = torch.Generator().manual_seed(11)
    state = saved.get_state()
    expected = torch.rand(5, generator=saved)
    gen, said = torch.Generator().manual_seed(99), []
    restore_generator(gen, state, said.append)
    assert torch.equal(torch.rand(5, generator=gen), expected) and said == []


def test_restore_generator_reseeds_from_a_state_saved_on_another_device_kind():
    """A CUDA generator's state (16 bytes of Philox seed and offset) cannot be set on a CPU generator (5,056
    bytes of Mersenne twister), as ``--resume --device cpu`` of a GPU run would ask: the generator is seeded from
    the saved bytes instead, the same way on every resume, and the log says what that changes."""
    from cil_train.checkpoint import restore_generator

    foreign = torch.arange(16, dtype=torch.uint8)
    draws = []
    for _ in range(2):
        gen, said = torch.Generator(), []
        restore_generator(gen, foreign, said.append)
        draws.append(torch.rand(5, generator=gen))
        assert len(said) == 1 and said[0].startswith("warning:") and "another kind of device" in said[0]
    assert torch.equal(draws[0], draws[1])
    other, said = torch.Generator(), []
    restore_generator(other, torch.arange(1, 17, dtype=torch.uint8), said.append)
    assert not torch.equal(torch.rand(5, generator=other), draws[0])


def test_checkpoint_state_is_moved_to_the_host_once_and_cpu_tensors_are_not_copied():
    from cil_train.checkpoint import _on_cpu

    t = torch.randn(3)
    state = {"net": {"w": t, "steps": [t, (t, 2)]}, "phase": 1, "name": "x"}
    moved = _on_cpu(state)
    assert moved["net"]["w"] is t and moved["net"]["steps"][0] is t and moved["net"]["steps"][1][0] is t
    assert isinstance(moved["net"]["steps"], list) and isinstance(moved["net"]["steps"][1], tuple)
    assert moved["phase"] == 1 and moved["name"] == "x"
