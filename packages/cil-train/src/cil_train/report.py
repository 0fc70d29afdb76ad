"""What a run leaves behind: the per-phase table on the terminal, metrics.json/.csv and PNG plots.

Plots need matplotlib (``pip install 'cil-train[plots]'``; the hatch environments have it). Without
it the run still writes every number and says which plots it skipped.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from cil_data import atomic_write_bytes

from .checkpoint import atomic_write_json, writing

__all__ = ["PhaseTable", "fmt", "plot_accuracy_curves", "write_reports"]

PLOTS = ("accuracy.png", "accuracy_matrix.png", "confusion_matrix.png", "weight_norms.png")
MAX_NAMED_CLASSES = 50  # beyond this, plots label classes by index (names would not be readable)


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class PhaseTable:
    """Prints one row per phase as it ends, and the summary at the end."""

    def __init__(self, log: Callable[[str], None], with_nme: bool = False) -> None:
        self.log = log
        self.with_nme = with_nme
        self.header_done = False

    def _header(self) -> None:
        cols = ["phase", "classes", "acc", "old", "new", "imb.score", "many", "med", "few"]
        if self.with_nme:
            cols.append("NME acc")
        cols.append("time")
        self.log("| " + " | ".join(cols) + " |")
        self.log("|" + "|".join("---:" for _ in cols) + "|")
        self.header_done = True

    def row(self, rec: dict[str, Any]) -> None:
        if not self.header_done:
            self._header()
        shots = rec["many_medium_few"]
        cells = [str(rec["phase"]), str(rec["num_classes"]), fmt(rec["acc"]), fmt(rec["old_acc"]), fmt(rec["new_acc"]),
                 fmt(rec["imbalance_score"]), fmt(shots["many"]), fmt(shots["medium"]), fmt(shots["few"])]
        if self.with_nme:
            nme = rec.get("nme")
            cells.append(fmt(nme["acc"]) if nme else "—")
        cells.append(f"{rec['seconds']:.0f}s")
        self.log("| " + " | ".join(cells) + " |")

    def summary(self, result: dict[str, Any]) -> None:
        line = (f"average incremental accuracy {fmt(result['avg_inc_acc'])} %, last accuracy {fmt(result['last_acc'])} %, "
                f"forgetting {fmt(result['forgetting'])}")
        if "nme" in result:
            line += f"; NME: average {fmt(result['nme']['avg_inc_acc'])} %, last {fmt(result['nme']['last_acc'])} %"
        self.log(line + f"; {result['wall_seconds']:.0f} s in all")


def _csv(records: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["phase", "num_classes", "acc", "old_acc", "new_acc", "imbalance_score", "many_acc", "medium_acc",
                "few_acc", "nme_acc", "train_images", "exemplars", "seconds"])
    for r in records:
        shots = r["many_medium_few"]
        nme = r.get("nme")
        w.writerow([r["phase"], r["num_classes"], r["acc"], r["old_acc"], r["new_acc"], r["imbalance_score"],
                    shots["many"], shots["medium"], shots["few"], nme["acc"] if nme else None,
                    r["train_images"], r["exemplars"], round(r["seconds"], 3)])
    return buf.getvalue()


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with writing(path, "plot"):
        atomic_write_bytes(path, buf.getvalue())


def plot_accuracy_curves(runs: Sequence[tuple[str, dict[str, Any]]], path: Path, title: str = "") -> bool:
    """Accuracy after each phase (against the number of classes seen) for one or several runs."""
    plt = _matplotlib()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, m in runs:
        classes = [p["num_classes"] for p in m["phases"]]
        ax.plot(classes, m["acc_per_phase"], marker="o", label=f"{label} (avg {m['avg_inc_acc']:.1f})")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    _save_figure(fig, path)
    plt.close(fig)
    return True


def _plots(out: Path, result: dict[str, Any], title: str) -> None:
    import numpy as np

    plt = _matplotlib()
    classes = [p["num_classes"] for p in result["phases"]]
    # accuracy per phase, with old / new
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(classes, result["acc_per_phase"], marker="o", label="all seen classes")
    ax.plot(classes, [np.nan if v is None else v for v in result["old_acc"]], marker="s", ls="--", label="old classes")
    ax.plot(classes, [np.nan if v is None else v for v in result["new_acc"]], marker="^", ls=":", label="new classes")
    if "nme" in result:
        ax.plot(classes, [np.nan if v is None else v for v in result["nme"]["acc_per_phase"]], marker="x", label="NME")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_figure(fig, out / "accuracy.png")
    plt.close(fig)
    # accuracy matrix A[t][s]
    mat = np.array([[np.nan if v is None else v for v in row] for row in result["acc_matrix"]], dtype=float)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
    ax.set_xlabel("task s")
    ax.set_ylabel("after phase t")
    ax.set_title("accuracy on task s after phase t (%)", fontsize=10)
    ticks = range(mat.shape[0])
    ax.set_xticks(ticks, [str(i + 1) for i in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])
    if mat.shape[0] <= 12:
        for (i, j), v in np.ndenumerate(mat):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    fig.colorbar(im, ax=ax)
    _save_figure(fig, out / "accuracy_matrix.png")
    plt.close(fig)
    # confusion matrix, log(1 + x)
    cm = np.log1p(np.array(result["confusion_matrix"], dtype=float))
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(cm, cmap="magma")
    for b in np.cumsum(result["increments"])[:-1]:
        ax.axhline(b - 0.5, color="white", lw=0.5)
        ax.axvline(b - 0.5, color="white", lw=0.5)
    names = result.get("class_names") or []
    if names and len(names) == cm.shape[0] and cm.shape[0] <= MAX_NAMED_CLASSES:  # the source's class names
        size = 7 if cm.shape[0] <= 20 else 5
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=size)
        ax.set_yticks(range(len(names)), names, fontsize=size)
        ax.set_xlabel("predicted class (incremental order)")
        ax.set_ylabel("true class")
    else:
        ax.set_xlabel("predicted class (incremental index)")
        ax.set_ylabel("true class (incremental index)")
    ax.set_title("confusion matrix after the last phase, log(1+x)", fontsize=10)
    fig.colorbar(im, ax=ax)
    _save_figure(fig, out / "confusion_matrix.png")
    plt.close(fig)
    # per-class FC weight norms, coloured by task
    norms = np.array(result["weight_norms"])
    task_of = np.repeat(np.arange(len(result["increments"])), result["increments"])[: len(norms)]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(np.arange(len(norms)), norms, color=plt.cm.tab10(task_of % 10), width=0.9)
    if names and len(names) == len(norms) and len(norms) <= MAX_NAMED_CLASSES:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7 if len(names) <= 20 else 5)
    ax.set_xlabel("class (incremental order; colour = task)")
    ax.set_ylabel("‖W_c‖₂")
    ax.set_title("classifier weight norm per class after the last phase", fontsize=10)
    _save_figure(fig, out / "weight_norms.png")
    plt.close(fig)


def write_reports(out: Path, cfg: Any, result: dict[str, Any], plots: bool = True,
                  log: Callable[[str], None] = print) -> None:
    """metrics.json (summary + per-phase records), metrics.csv (one row per phase) and the PNG plots."""
    atomic_write_json(out / "metrics.json", result)
    with writing(out / "metrics.csv", "file"):
        atomic_write_bytes(out / "metrics.csv", _csv(result["phases"]).encode("utf-8"))
    if not plots:
        return
    if _matplotlib() is None:
        log("plots skipped: matplotlib is not installed (pip install 'cil-train[plots]')")
        return
    title = f"{cfg.method} on {result['data']} ({result['num_phases']} phases)"
    _plots(out, result, title)
    log(f"wrote {out}/metrics.json, metrics.csv and {', '.join(PLOTS)}")
