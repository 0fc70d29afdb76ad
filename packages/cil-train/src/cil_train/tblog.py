"""``--log tensorboard``: TensorBoard event files in ``RUN/tensorboard`` (the optional extra
``pip install 'cil-train[tensorboard]'``), beside the default ``metrics.json``/``metrics.csv``.

What is recorded, as Avalanche and PyCIL users expect it:

* ``train/loss``, ``train/lr`` and every figure a method reports (``train/<name>``) after each epoch;
* ``eval/acc``, ``eval/old_acc``, ``eval/new_acc``, ``eval/imbalance_score``, ``eval/acc_task_<s>`` (accuracy on
  task s, the accuracy matrix's row) and ``eval/nme_acc`` after each phase; ``eval/num_classes`` says where
  each phase ends;
* at the end: ``summary/avg_inc_acc``, ``summary/last_acc``, ``summary/forgetting``, the accuracy matrix as a
  text table (``accuracy_matrix``) and, with matplotlib, as an image.

The x-axis of every scalar is the run's epoch count (all stages of all phases, 1-based), so phases sit
side by side. A resumed run purges the events written after its checkpoint and writes them again, so a
killed and resumed run holds each point once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["TensorBoardLog", "check_tensorboard"]


def check_tensorboard() -> None:
    """Raise a :class:`ConfigError` (before anything trains) when TensorBoard cannot be written."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError("--log tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'cil-train[tensorboard]' (or pip install tensorboard), or drop --log "
                          f"({exc})") from exc


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLog:
    """Writes the run's events; ``purge_step`` (a resumed run): the first epoch count written again."""

    def __init__(self, folder: str | Path, purge_step: int | None = None) -> None:
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def epoch(self, step: int, figures: dict[str, Any]) -> None:
        for name, value in figures.items():
            if _finite(value):
                self.writer.add_scalar(f"train/{name}", value, step)

    def phase(self, step: int, rec: dict[str, Any]) -> None:
        w = self.writer
        for key in ("acc", "old_acc", "new_acc", "imbalance_score", "num_classes"):
            if _finite(rec.get(key)):
                w.add_scalar(f"eval/{key}", rec[key], step)
        for s, value in enumerate(rec.get("task_acc") or []):
            if _finite(value):
                w.add_scalar(f"eval/acc_task_{s + 1}", value, step)
        nme = rec.get("nme")
        if isinstance(nme, dict) and _finite(nme.get("acc")):
            w.add_scalar("eval/nme_acc", nme["acc"], step)
        w.flush()

    def final(self, step: int, result: dict[str, Any]) -> None:
        w = self.writer
        for key in ("avg_inc_acc", "last_acc", "forgetting"):
            if _finite(result.get(key)):
                w.add_scalar(f"summary/{key}", result[key], step)
        matrix = result.get("acc_matrix") or []
        if matrix:
            head = "| after phase | " + " | ".join(f"task {s + 1}" for s in range(len(matrix[-1]))) + " |"
            rule = "|---|" + "---:|" * len(matrix[-1])
            rows = [f"| {t + 1} | " + " | ".join("" if v is None else f"{v:.2f}" for v in row) + " |"
                    for t, row in enumerate(matrix)]
            w.add_text("accuracy_matrix", "\n".join([head, rule, *rows]), step)
            figure = _matrix_figure(matrix)
            if figure is not None:
                w.add_figure("accuracy_matrix", figure, step)
        w.flush()

    def close(self) -> None:
        self.writer.close()


def _matrix_figure(matrix: list[list[float | None]]) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    mat = np.array([[np.nan if v is None else v for v in row] + [np.nan] * (len(matrix) - len(row))
                    for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
    ax.set_xlabel("task s")
    ax.set_ylabel("after phase t")
    fig.colorbar(im, ax=ax)
    return fig
