"""``--base-checkpoint FILE``: train the base phase once, reuse it in every run that would train the same one.

The papers (and PyCIL) start every incremental method of a comparison from the same well-trained base
model, so that differences come from the incremental phases. With ``--base-checkpoint FILE`` a run whose
FILE does not exist trains phase 0 as usual and then writes the network to FILE; a run whose FILE exists
loads it instead of training phase 0 (evaluation, the memory update and the checkpoint of phase 0 run as
usual).

FILE records the *fingerprint* of the base phase: everything that decides the trained network, namely the
data and its long tail, the classes of phase 0 and their training counts, the backbone (and its weight
file), the main stage of phase 0 (epochs, lr, schedule, batch size, momentum, weight decay), precision,
seed and the training objective. The objective is ``"plain-ce"`` for methods whose phase 0 is plain
cross-entropy on the default network (``Method.plain_base``: finetune, iCaRL, WA, ...), so those share one
base model; any other method's objective is its name and the options its phase 0 reads (all but
``Method.incremental_only``), so it shares with its own variants that differ only in later phases. A run
whose fingerprint differs from FILE's stops with the list of differences.

``--base-cache DIR`` names the file itself: ``DIR/<method or plain-ce>-seed<N>-<key>.pt``, where the key is a
hash of the fingerprint, so one folder serves every method, variant and seed of a matrix, and a run whose
phase 0 cannot be stored (several stages, a stage after the memory update) trains it as usual.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import torch

from cil_data import atomic_write_bytes

from .errors import ConfigError

FORMAT = "cil-train base model"
VERSION = 1

_DATA_FIELDS = ("data", "data_root", "image_size", "augment", "imbalance", "profile", "images_per_class", "lt_seed")
_TRAIN_FIELDS = ("backbone", "backbone_weights", "seed", "amp", "channels_last", "base_steps")
_STAGE_FIELDS = ("epochs", "lr", "batch_size", "schedule", "lr_steps", "lr_decay", "momentum", "weight_decay",
                 "augment")


def _plain(value: Any) -> Any:
    """Tuples as lists: the fingerprint compares equal after a round trip through the file."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def unstorable(method: Any, stages: list[Any]) -> str:
    """Why phase 0's ``stages`` cannot be stored as a base model, or "" when they can."""
    if any(s.after_memory for s in stages):
        return (f"--method {method.name} trains a stage after phase 0's memory update; its base model cannot be "
                "stored before it")
    if len(stages) != 1:
        return (f"--method {method.name} trains {len(stages)} stages in phase 0; only a single-stage base phase can "
                "be shared")
    return ""


def fingerprint(run: Any, method: Any, stages: list[Any], classes: list[int], counts: list[int],
                amp: str) -> dict[str, Any]:
    """What decides the base model of ``run`` (phase 0's ``stages``, its ``classes`` and their ``counts``)."""
    why = unstorable(method, stages)
    if why:
        raise ConfigError(f"--base-checkpoint: {why} (run without --base-checkpoint)")
    (stage,) = stages
    if method.plain_base:
        objective: Any = "plain-ce"
    else:
        options = attrs.asdict(method.options) if attrs.has(type(method.options)) else {}
        read = {k: _plain(v) for k, v in sorted(options.items()) if k not in method.incremental_only}
        objective = {"method": method.name, "options": read}
    return {
        "objective": objective,
        **{f: _plain(getattr(run, f)) for f in _DATA_FIELDS},
        "classes": [int(c) for c in classes],
        "train_counts": [int(c) for c in counts],
        **{f: _plain(getattr(run, f)) for f in _TRAIN_FIELDS if f != "amp"},
        "precision": amp,
        "stage": {f: _plain(getattr(stage, f)) for f in _STAGE_FIELDS},
        "sampler": "uniform" if stage.sampler is None else f"{method.name}'s own",
        "parameters": "all" if stage.parameters is None else f"{method.name}'s own",
        "loss": "the method's" if stage.loss is None else f"{method.name}'s stage loss",
    }


def cache_file(folder: str | Path, print_: dict[str, Any]) -> Path:
    """``--base-cache``'s file for a base phase: readable prefix, then a hash of the whole fingerprint."""
    key = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]
    objective = print_["objective"]
    who = objective if isinstance(objective, str) else objective["method"]
    return Path(folder) / f"{who}-seed{print_['seed']}-{key}.pt"


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '(absent)')!r} in the file, {current.get(k, '(absent)')!r} here"
            for k in keys if saved.get(k) != current.get(k)]


def save_base(path: str | Path, print_: dict[str, Any], net_state: dict[str, Any], trained_by: str) -> None:
    """Write the base model atomically (a run killed while writing leaves no half file)."""
    import io

    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "fingerprint": print_, "trained_by": trained_by,
                "net": net_state}, buf)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def load_base(path: str | Path, print_: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The network state of FILE and the method that trained it; ConfigError when it is not this run's base."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: say which
        raise ConfigError(f"--base-checkpoint {path}: cannot be read ({exc}); delete it to train the base again")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"--base-checkpoint {path}: not a base model written by cil-train")
    diff = differences(state["fingerprint"], print_)
    if diff:
        raise ConfigError(f"--base-checkpoint {path} holds another base phase than this run's: "
                          + "; ".join(diff) + ". Give another file (one per protocol and seed), or the same options.")
    return state["net"], str(state.get("trained_by", "?"))
