"""``cil-train compare RUN...``: one markdown table and one plot over several run folders.

The plot (``comparison.png``) has three panels against the classes seen: the accuracy on all seen
classes, on the old classes and on the new ones (the mean over each group's seeds).

Runs that differ only by ``--seed`` are grouped; each group shows mean ± standard deviation over its
seeds. A group is named after its method plus every method option that differs from the default
(e.g. ``icarl-jioc[jioc=ic]``), or by ``--labels``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import attrs

from cil_data import atomic_write_bytes

from .checkpoint import atomic_write_json
from .config import RunConfig
from .errors import ConfigError
from .report import _matplotlib, _save_figure, fmt

__all__ = ["RunSummary", "group_runs", "load_run", "main", "markdown_table", "mean_std"]

COLUMNS = (
    ("avg_inc_acc", "avg inc. acc"),
    ("last_acc", "last acc"),
    ("forgetting", "forgetting"),
    ("last_old_acc", "old acc (last)"),
    ("last_new_acc", "new acc (last)"),
    ("imbalance_score", "imb. score (mean)"),
    ("wall_seconds", "time (s)"),
)


@attrs.frozen
class RunSummary:
    folder: Path
    label: str
    seed: int
    metrics: dict[str, Any]

    def value(self, key: str) -> float | None:
        m = self.metrics  # a key a metrics.json of an older version lacks (e.g. NME's old/new accuracy) is None
        if key == "last_old_acc":
            return m["old_acc"][-1] if m.get("old_acc") else None
        if key == "last_new_acc":
            return m["new_acc"][-1] if m.get("new_acc") else None
        if key == "imbalance_score":
            vals = [v for v in m.get("imbalance_score") or [] if v is not None]
            return sum(vals) / len(vals) if vals else None
        return m.get(key)


def _label(cfg: dict[str, Any]) -> str:
    """The method plus each of its options that differs from the default (``config.json`` of any version)."""
    run = RunConfig.from_dict(cfg)
    options, defaults = run.method_options, type(run.method_options)()
    diffs = []
    for f in attrs.fields(type(options)):
        value, default = getattr(options, f.name), getattr(defaults, f.name)
        if value != default:
            diffs.append(f"{f.name.removeprefix(run.method.split('-')[0] + '_')}={value}")
    if run.nme:
        diffs.append("nme=True")
    return run.method + (f"[{','.join(diffs)}]" if diffs else "")


def load_run(folder: str | Path, label: str | None = None) -> RunSummary:
    folder = Path(folder)
    mfile, cfile = folder / "metrics.json", folder / "config.json"
    if not mfile.is_file() or not cfile.is_file():
        raise ConfigError(f"{folder}: not a finished run folder (needs metrics.json and config.json)")
    metrics = json.loads(mfile.read_text())
    if not metrics.get("complete"):
        raise ConfigError(f"{folder}: the run has not finished (metrics.json is partial); resume it first")
    cfg = json.loads(cfile.read_text())
    return RunSummary(folder, label or _label(cfg), int(cfg.get("seed", 0)), metrics)


def group_runs(runs: Sequence[RunSummary]) -> dict[str, list[RunSummary]]:
    """The runs by label; a label whose runs also report the nearest-mean-of-exemplars classifier (iCaRL's
    own, ``metrics["nme"]``) gets a second group right after it, ``"<label> (NME)"``, with those figures."""
    groups: dict[str, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    out: dict[str, list[RunSummary]] = {}
    for label, members in groups.items():
        out[label] = members
        nme = [attrs.evolve(r, label=f"{label} (NME)",
                            metrics={**r.metrics["nme"], "phases": r.metrics.get("phases"),
                                     "wall_seconds": r.metrics.get("wall_seconds")})
               for r in members if r.metrics.get("nme")]
        if nme:
            out[f"{label} (NME)"] = nme
    return out


def mean_std(values: Sequence[float | None]) -> str:
    """``"mean ± standard deviation"`` of the values that are not None (2 decimals); one value alone, or "—"."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def markdown_table(groups: dict[str, list[RunSummary]]) -> str:
    head = "| method | seeds | " + " | ".join(title for _k, title in COLUMNS) + " |"
    rule = "|---|---:|" + "|".join("---:" for _ in COLUMNS) + "|"
    rows = []
    for label, runs in groups.items():
        cells = [mean_std([r.value(k) for r in runs]) if k != "wall_seconds"
                 else f"{statistics.mean(r.value(k) for r in runs):.0f}" for k, _t in COLUMNS]
        rows.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows]) + "\n"


def summary_json(groups: dict[str, list[RunSummary]]) -> dict[str, Any]:
    out = {}
    for label, runs in groups.items():
        entry: dict[str, Any] = {"runs": [str(r.folder) for r in runs], "seeds": [r.seed for r in runs]}
        for key, _t in COLUMNS:
            vals = [r.value(key) for r in runs if r.value(key) is not None]
            entry[key] = {"mean": statistics.mean(vals) if vals else None,
                          "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
                          "values": vals}
        out[label] = entry
    return out


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def mean_curve(runs: Sequence[RunSummary]) -> dict[str, Any]:
    """The group's mean accuracy after each phase, on all seen classes and on the old and the new ones."""
    first = runs[0].metrics
    n = len(first["acc_per_phase"])
    same = [r.metrics for r in runs if len(r.metrics["acc_per_phase"]) == n]
    acc = [_mean_or_none([m["acc_per_phase"][i] for m in same]) for i in range(n)]
    known = [a for a in acc if a is not None]
    return {"phases": first["phases"], "acc_per_phase": acc, "avg_inc_acc": sum(known) / max(1, len(known)),
            "old_acc": [_mean_or_none([(m.get("old_acc") or [None] * n)[i] for m in same]) for i in range(n)],
            "new_acc": [_mean_or_none([(m.get("new_acc") or [None] * n)[i] for m in same]) for i in range(n)]}


def plot_comparison(curves: Sequence[tuple[str, dict[str, Any]]], path: Path, title: str = "") -> bool:
    """Three panels over the classes seen: accuracy on all seen classes, on the old classes, on the new ones."""
    plt = _matplotlib()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    panels = (("acc_per_phase", "all seen classes"), ("old_acc", "old classes"), ("new_acc", "new classes"))
    for ax, (key, name) in zip(axes, panels):
        for label, m in curves:
            classes = [p["num_classes"] for p in m["phases"]]
            values = [float("nan") if v is None else v for v in m[key]]
            shown = f"{label} (avg {m['avg_inc_acc']:.1f})" if key == "acc_per_phase" else label
            ax.plot(classes, values, marker="o", label=shown)
        ax.set_title(f"accuracy on {name}", fontsize=10)
        ax.set_xlabel("classes seen")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    _save_figure(fig, path)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cil-train compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.json and config.json)")
    p.add_argument("--out", default="comparison", help="folder for comparison.md/.json/.png (default: %(default)s)")
    p.add_argument("--labels", help="comma-separated labels, one per run folder (default: method + changed options)")
    p.add_argument("--title", default="", help="title of the plot and the table")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [None] * len(args.runs)
    if len(labels) != len(args.runs):
        raise ConfigError(f"--labels gives {len(labels)} labels for {len(args.runs)} run folders")
    runs = [load_run(f, lab) for f, lab in zip(args.runs, labels)]
    groups = group_runs(runs)
    out = Path(args.out)
    table = markdown_table(groups)
    title = f"## {args.title}\n\n" if args.title else ""
    atomic_write_bytes(out / "comparison.md", (title + table).encode("utf-8"))
    atomic_write_json(out / "comparison.json", summary_json(groups))
    plotted = plot_comparison([(lab, mean_curve(rs)) for lab, rs in groups.items()], out / "comparison.png",
                              args.title)
    print(title + table, end="")
    print(f"wrote {out}/comparison.md, comparison.json" + (", comparison.png" if plotted else " (no plot: matplotlib missing)"))
    return 0
