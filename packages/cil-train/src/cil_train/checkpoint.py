"""The run's checkpoint: one record type (:class:`Checkpoint`) written and read by one pair of functions.

Files are replaced atomically (:func:`cil_data.atomic_write_bytes`: a new file beside the target, fsync,
``os.replace``), so a crash never leaves a half-written checkpoint, report or ``config.json``. Checkpoints
hold plain values and tensors only and are read with ``torch.load(weights_only=True)``: a run folder
received from someone else cannot execute code when it is resumed.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cil_data import atomic_write_bytes

from .errors import ConfigError

__all__ = ["CHECKPOINT", "Checkpoint", "atomic_write_json", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"
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
    version: int = FORMAT_VERSION


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(dataclasses.asdict(ckpt), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path} cannot be read as a cil-train checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); it may be cut short or "
                          "damaged, or not come from cil-train") from exc
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise ConfigError(f"{path} is a checkpoint of format {version!r}; this cil-train reads format "
                          f"{FORMAT_VERSION} (start the run again, or resume it with the cil-train that wrote it)")
    names = {f.name for f in dataclasses.fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in state.items() if k in names})


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))
