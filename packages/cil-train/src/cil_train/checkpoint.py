"""The run's checkpoint: one record type (:class:`Checkpoint`) written and read by one pair of functions.

Files are replaced atomically (:func:`cil_data.atomic_write_bytes`: a new file beside the target, fsync,
``os.replace``), so a crash never leaves a half-written checkpoint, report or ``config.json``. Before a
checkpoint is replaced, the one it replaces is kept as ``checkpoint.prev.pt`` (a hard link, else a copy):
when ``checkpoint.pt`` is damaged later (a disk filled up, a copy was interrupted, a bit flipped),
``--resume`` falls back to the previous one and says so. The record carries a SHA-256 of its content (every
tensor's bytes and every value), so damage anywhere in the file is found, not only in its zip structure. Checkpoints hold plain
values and tensors only and are read with ``torch.load(weights_only=True)``: a run folder received from
someone else cannot execute code when it is resumed. A write that fails (``OSError``: disk full,
permissions) leaves the previous file intact and raises :class:`RunWriteError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cil_data import atomic_write_bytes
from cil_data.atomic import temporary_name

from .errors import CheckpointError, RunWriteError

__all__ = ["CHECKPOINT", "PREVIOUS_CHECKPOINT", "Checkpoint", "atomic_write_json", "checkpoint_candidates",
           "load_checkpoint", "remove_temporary_files", "restore_generator", "save_checkpoint", "writing"]

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    """Where a run stands: after ``epochs_done`` epochs of stage ``stage`` of phase ``phase`` (0-based), or at
    the end of that phase when ``phase_complete``. ``net``/``teacher``: ``IncrementalNet.checkpoint_state()``;
    the optimiser, schedule, sampler and generator states are those of the stage in progress (None at a
    phase end); ``method``: the method's ``state_dict()``; ``records``: the per-phase metrics so far."""

    config: dict[str, Any]
    phase: int
    phase_complete: bool
    net: dict[str, Any]
    records: list[dict[str, Any]]
    elapsed: float
    memory_file: str | None = None
    stage: int = 0
    epochs_done: int = 0
    step: int = 0
    teacher: dict[str, Any] | None = None
    method: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    sampler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    gen: torch.Tensor | None = None
    aug_gen: torch.Tensor | None = None
    phase_losses: list[float] = field(default_factory=list)
    end_figures: dict[str, float] = field(default_factory=dict)
    version: int = FORMAT_VERSION


@contextlib.contextmanager
def writing(path: str | Path, what: str):
    """Turn an ``OSError`` while writing ``path`` (disk full, permissions, quota) into a :class:`RunWriteError`
    that names the file and says that the previous version is intact (all writes are atomic)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RunWriteError(
            f"cannot write the {what} {path} ({reason}); the previous version of the file is intact. Free space "
            f"(or fix the permissions) and continue the run with --resume {Path(path).parent}") from exc


def _digest(value: Any, h: "hashlib._Hash | None" = None) -> str:
    """SHA-256 over a checkpoint's content: every tensor's dtype, shape and bytes and every plain value, in order."""
    h = h or hashlib.sha256()
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _digest(k, h)
            _digest(v, h)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for v in value:
            _digest(v, h)
    else:
        h.update(f"V{type(value).__name__}:{value!r};".encode())
    return h.hexdigest()


def restore_generator(gen: torch.Generator, state: torch.Tensor, log: Callable[[str], None]) -> None:
    """``gen.set_state(state)``. A state saved by a generator of another device kind (a run checkpointed on a GPU
    and resumed on the CPU, or the reverse: ``--device`` may change on ``--resume``) does not fit ``gen``, so
    ``gen`` is seeded from the saved state's SHA-256 instead (the same resume draws the same numbers), with a
    warning: the augmentation from there on differs from an uninterrupted run's."""
    state = state.detach().to("cpu", torch.uint8)
    if state.numel() == gen.get_state().numel():
        gen.set_state(state)
        return
    seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little")
    gen.manual_seed(seed)
    log(f"warning: the checkpoint's augmentation generator was saved on another kind of device than "
        f"{gen.device.type}; it is seeded from the saved state instead, so the augmentations of the rest of the "
        f"run differ from those of a run that was not interrupted")


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in host memory (CPU tensors as they are): a GPU run's state is copied once,
    without a wait per tensor, before it is hashed and serialised."""
    devices: set[torch.device] = set()

    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            if v.device.type == "cpu":
                return v
            devices.add(v.device)
            return v.detach().to("cpu", non_blocking=True)
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(move(x) for x in v)
        return v

    out = move(value)
    for device in devices:  # the non-blocking copies land before anything reads them (each GPU's, under DDP)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return out


def _encode(ckpt: Checkpoint) -> bytes:
    state = _on_cpu(dataclasses.asdict(ckpt))
    state["sha256"] = _digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically, keeping the checkpoint it replaces as ``checkpoint.prev.pt``."""
    path = Path(path)
    data = _encode(ckpt)
    with writing(path, "checkpoint"):
        if path.is_file():
            previous = path.with_name(PREVIOUS_CHECKPOINT)
            tmp = temporary_name(previous)
            try:
                try:
                    os.link(path, tmp)  # the same bytes under a second name; the next line replaces only `path`
                except OSError:
                    shutil.copyfile(path, tmp)
                os.replace(tmp, previous)
                # when `previous` already was a link to the same file (a run killed right after this rename),
                # rename() does nothing and leaves `tmp`: remove it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        atomic_write_bytes(path, data)


def _torch_load(source: Any, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Weights only load failed" in text:
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values (pickled code); cil-train "
                "refuses to load it, because loading it could run arbitrary code. Checkpoints written by "
                "cil-train never hold such objects: the file was not written by cil-train, or was tampered "
                "with") from exc
        first = text.splitlines()[0] if text else "no details"
        raise CheckpointError(f"{path} cannot be read as a cil-train checkpoint ({type(exc).__name__}: {first}); "
                              "it is cut short or damaged, or does not come from cil-train") from exc


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only); a damaged, foreign
    or unsafe file raises :class:`~cil_train.errors.CheckpointError` naming it."""
    path = Path(path)
    state = _torch_load(path, path)
    if isinstance(state, dict) and "sha256" in state:  # files written before the checksum have none
        if _digest({k: v for k, v in state.items() if k != "sha256"}) != state["sha256"]:
            raise CheckpointError(f"{path} is damaged: the checksum of its content does not match (a bit flipped, "
                                  "or the file was modified)")
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise CheckpointError(f"{path} is a checkpoint of format {version!r}; this cil-train reads format "
                              f"{FORMAT_VERSION} (start the run again, or resume it with the cil-train that wrote it)")
    names = {f.name for f in dataclasses.fields(Checkpoint)}
    try:
        return Checkpoint(**{k: v for k, v in state.items() if k in names})
    except TypeError as exc:
        raise CheckpointError(f"{path} is not a complete cil-train checkpoint ({exc})") from exc


def checkpoint_candidates(folder: str | Path) -> list[Path]:
    """The checkpoints of a run folder to resume from, newest first: ``checkpoint.pt``, ``checkpoint.prev.pt``."""
    folder = Path(folder)
    return [folder / CHECKPOINT, folder / PREVIOUS_CHECKPOINT]


def remove_temporary_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``NAME.tmp-PID-RANDOM``) a killed run left in ``folder`` and ``folder/memory``
    (an atomic write that never reached its rename); returns them. Call it only while holding the run lock."""
    removed = []
    for sub in (Path(folder), Path(folder) / "memory"):
        for tmp in sub.glob("*.tmp-*"):
            if tmp.is_file():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically (an ``OSError`` becomes a :class:`RunWriteError`)."""
    with writing(path, "file"):
        atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))
