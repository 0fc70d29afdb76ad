"""Damaged run folders, failing writes and two writers.

* A truncated or bit-flipped ``checkpoint.pt`` or memory ``.h5`` makes ``--resume`` fall back to the previous
  checkpoint (``checkpoint.prev.pt``), say so, and still end with the uninterrupted run's metrics; when no
  checkpoint is usable the error names the files and what to do. A damaged ``config.json`` is replaced by
  the checkpoint's copy; an edited one is refused.
* Checkpoints are read with ``weights_only=True``: one carrying a pickled object is refused and runs no code.
* An ``OSError`` (disk full) in the middle of a checkpoint or memory write stops the run with exit 4 and a
  clear message; the previous file is intact and ``--resume`` finishes the run exactly.
* One writer per run folder: a second process is refused with exit 2 naming the first; a lock left by a
  killed process does not block ``--resume``.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

import cil_data
from cil_data import ExemplarMemory
from cil_train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, load_checkpoint
from cil_train.cli import main
from cil_train.errors import CheckpointError
from cil_train.runlock import LOCK_FILE, RunLock

_spec = importlib.util.spec_from_file_location("_cil_train_test_helpers", Path(__file__).with_name("conftest.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
read_metrics, tiny_args, without_timings = _helpers.read_metrics, _helpers.tiny_args, _helpers.without_timings

pytestmark = pytest.mark.slow

EXTRA = ("--threads", "1", "--method", "icarl")


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(tiny_args(tiny_npz, out, *EXTRA)) == 0
    return without_timings(read_metrics(out))


def _interrupted_run(tiny_npz, folder: Path, monkeypatch, at_phase: int = 2) -> Path:
    """A run stopped (KeyboardInterrupt) as phase ``at_phase + 1`` starts: phases 1..at_phase are done."""
    from cil_train import loop

    original = loop.Trainer._run_phase

    def stop(self, t, *args, **kwargs):
        if t == at_phase:
            raise KeyboardInterrupt
        return original(self, t, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop.Trainer, "_run_phase", stop)
        assert main(tiny_args(tiny_npz, folder, *EXTRA)) == 130
    return folder


def _resume(folder: Path, capsys) -> tuple[int, str, str]:
    code = main(["--resume", str(folder), "--progress", "none"])
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _flip_bit(path: Path, where: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x08
    path.write_bytes(bytes(data))


# -- damaged checkpoint / memory / config ----------------------------------------------------------------
@pytest.mark.parametrize("damage", [_truncate, _flip_bit], ids=["truncated", "bit-flipped"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(damage, tiny_npz, reference, tmp_path, monkeypatch,
                                                           capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    assert (run / PREVIOUS_CHECKPOINT).is_file()
    damage(run / CHECKPOINT)
    with pytest.raises(CheckpointError, match=CHECKPOINT):
        load_checkpoint(run / CHECKPOINT)
    code, out, err = _resume(run, capsys)
    assert code == 0, err
    assert "Resuming from the previous checkpoint" in out and PREVIOUS_CHECKPOINT in out
    assert without_timings(read_metrics(run)) == reference


def test_damaged_memory_file_falls_back_to_the_previous_checkpoint(tiny_npz, reference, tmp_path, monkeypatch,
                                                                  capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    _flip_bit(run / "memory" / "after_phase_02.h5", 0.5)
    code, out, err = _resume(run, capsys)
    assert code == 0, err
    assert "after_phase_02.h5" in out and "checksum" in out and "previous checkpoint" in out
    assert without_timings(read_metrics(run)) == reference


def test_no_usable_checkpoint_is_a_clear_error(tiny_npz, tmp_path, monkeypatch, capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    _truncate(run / CHECKPOINT)
    _flip_bit(run / PREVIOUS_CHECKPOINT)
    code, _out, err = _resume(run, capsys)
    assert code == 2 and "Traceback" not in err
    assert CHECKPOINT in err and PREVIOUS_CHECKPOINT in err and "damaged" in err
    assert "Restore" in err and "start the run again" in err


def test_damaged_config_json_is_replaced_by_the_checkpoint_copy(tiny_npz, reference, tmp_path, monkeypatch, capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    _truncate(run / "config.json")
    code, _out, err = _resume(run, capsys)
    assert code == 0, err
    assert "config.json is damaged" in err and "copy of the configuration saved in the checkpoint" in err
    assert without_timings(read_metrics(run)) == reference
    assert json.loads((run / "config.json").read_text())["method"] == "icarl"  # rewritten


def test_edited_config_json_is_refused(tiny_npz, tmp_path, monkeypatch, capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    cfg = json.loads((run / "config.json").read_text())
    cfg["epochs"] = 3
    (run / "config.json").write_text(json.dumps(cfg))
    code, _out, err = _resume(run, capsys)
    assert code == 2 and "config.json differs" in err and "--epochs: 3 in config.json, 2 in the checkpoint" in err


class _Payload:
    """A pickled object that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tiny_npz, tmp_path, monkeypatch, capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    marker = tmp_path / "code-was-run"
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        state = torch.load(run / name, weights_only=True)
        state["records"].append(_Payload(marker))
        torch.save(state, run / name)
    with pytest.raises(CheckpointError, match="refuses to load it"):
        load_checkpoint(run / CHECKPOINT)
    code, _out, err = _resume(run, capsys)
    assert code == 2 and "pickled" in err and "Traceback" not in err
    assert not marker.exists()


# -- failing writes ------------------------------------------------------------------------------------------
def test_disk_full_in_the_middle_of_a_checkpoint_write(tiny_npz, reference, tmp_path, monkeypatch, capsys):
    import cil_data.atomic as atomic

    run = tmp_path / "run"
    calls = {"n": 0}
    real_open = open

    class HalfWritten:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def failing_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if CHECKPOINT in str(path) and "w" in mode:
            calls["n"] += 1
            if calls["n"] == 4:  # the end of phase 2 (after phase 1's two and phase 2's first epoch)
                return HalfWritten(fh)
        return fh

    monkeypatch.setattr(atomic, "open", failing_open, raising=False)
    code = main(tiny_args(tiny_npz, run, *EXTRA))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 4, err
    assert f"cannot write the checkpoint {run / CHECKPOINT}" in err and "No space left on device" in err
    assert "intact" in err and f"--resume {run}" in err
    assert not list(run.glob("*.tmp-*"))  # the half-written file is gone
    before = load_checkpoint(run / CHECKPOINT)  # the previous checkpoint is intact
    assert (before.phase, before.phase_complete, before.epochs_done) == (1, False, 1)
    monkeypatch.undo()
    code, _out, err = _resume(run, capsys)
    assert code == 0, err
    assert without_timings(read_metrics(run)) == reference


def test_disk_full_in_the_middle_of_a_memory_write(tiny_npz, reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, name, *args, **kwargs):
        if "after_phase_02" in self.file.filename:
            calls["n"] += 1
            if calls["n"] == 2:  # the second array of the phase-2 memory
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    code = main(tiny_args(tiny_npz, run, *EXTRA))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 4, err
    assert "cannot write the exemplar memory" in err and "after_phase_02.h5" in err and "intact" in err
    assert not list((run / "memory").glob("*.tmp-*"))
    assert sorted(p.name for p in (run / "memory").iterdir()) == ["after_phase_01.h5"]
    ExemplarMemory.load(run / "memory" / "after_phase_01.h5")  # the previous memory is intact
    monkeypatch.undo()
    code, _out, err = _resume(run, capsys)
    assert code == 0, err
    assert without_timings(read_metrics(run)) == reference
    assert sorted(p.name for p in (run / "memory").iterdir()) == ["after_phase_03.h5"]


# -- one writer per run folder --------------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first(tiny_npz, tmp_path, monkeypatch, capsys):
    run = _interrupted_run(tiny_npz, tmp_path / "run", monkeypatch)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cil_train.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(120)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _out, err = _resume(run, capsys)
        assert code == 2 and "Traceback" not in err
        assert f"is in use by process {holder.pid} on host" in err and "--resume" in err
        code = main(tiny_args(tiny_npz, run, *EXTRA))  # a new run into the same folder
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2 and f"process {holder.pid}" in err
        holder.send_signal(signal.SIGKILL)  # the lock file stays behind, the lock goes with the process
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    assert (run / LOCK_FILE).is_file()
    code, _out, err = _resume(run, capsys)
    assert code == 0, err


def test_the_lock_is_held_in_process_too_and_released_after_the_run(tmp_path):
    with RunLock(tmp_path / "r"):
        with pytest.raises(Exception, match=f"process {os.getpid()}"):
            RunLock(tmp_path / "r").acquire()
    with RunLock(tmp_path / "r"):  # released: can be taken again
        pass


def test_saving_over_a_previous_checkpoint_that_is_a_link_of_the_current_one_leaves_no_temporary_file(tmp_path):
    """A run killed right after linking the old checkpoint aside leaves both names on one file; the next save
    must still end with exactly two files (rename() between two links of one file does nothing)."""
    from cil_train.checkpoint import Checkpoint, save_checkpoint

    ckpt = Checkpoint(config={}, phase=0, phase_complete=True, net={}, records=[], elapsed=0.0)
    save_checkpoint(tmp_path / CHECKPOINT, ckpt)
    os.link(tmp_path / CHECKPOINT, tmp_path / PREVIOUS_CHECKPOINT)
    save_checkpoint(tmp_path / CHECKPOINT, ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT, PREVIOUS_CHECKPOINT])
    assert load_checkpoint(tmp_path / PREVIOUS_CHECKPOINT).phase == 0
