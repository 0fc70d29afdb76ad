"""Why the old classes are lost in a run's last phase: feature drift, head drift, or new classes taking them.

    hatch run python tools/last_phase_drift.py results/glyphs100-b50-s5-m0/runs/podnet-bsce-relaxed__rerun_12-06_-s1 ...

Each argument is a finished run folder: its ``checkpoint.prev.pt`` holds the network as the second-last phase
left it (*before*: the teacher of a checkpoint written during the last phase, or the end of the second-last
phase), and ``checkpoint.pt`` the network after the last phase (*after*). On the test images of the old classes (every class seen before the
last phase) it reports, in percent:

* ``before``: accuracy of *before* on them (where the last phase started);
* ``old acc``: accuracy of *after* on all seen classes (the run's own old-class figure, recomputed);
* ``to new``: the share of old images that *after* assigns to one of the last phase's new classes;
* ``within old``: accuracy of *after* when its argmax is restricted to the old classes (what feature and
  head drift among the old classes alone would leave);
* ``old head, new feat.``: *before*'s head on *after*'s features, old classes only (the features' drift,
  with the old head held fixed);
* ``new head, old feat.`` and its ``to new``: *after*'s head on *before*'s features (the head's drift,
  with the features held fixed): a high ``to new`` here means the new classes' rows cover where the old
  images were before the phase, not only where their features went;
* ``feat. cos``: mean cosine between an image's *before* and *after* features (1 = no drift);
* ``row cos``: mean cosine between each old class row (PODNet: each proxy) before and after.

It is the probe behind the README's reading of PODNet without memory (table (e)): more proxies per class,
more old images lost to the new classes. CPU, float32 (the run's own figures were
measured under its autocast, so they can differ in the second decimal), under a minute a run (it reads the data the run names
in its ``config.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cil_data import BatchAugment
from cil_models import IncrementalNet
from cil_train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, load_checkpoint
from cil_train.config import RunConfig
from cil_train.data import build_scenario, load_dataset

COLUMNS = ("before", "old acc", "to new", "within old", "old head, new feat.", "new head, old feat.",
           "to new (old feat.)", "feat. cos", "row cos")


def class_scores(net: IncrementalNet, features: torch.Tensor) -> torch.Tensor:
    """The scores whose argmax is the network's prediction (PODNet's unscaled merged similarities)."""
    head = net.head
    return head.similarity(features) if hasattr(head, "similarity") else head(features)


def class_rows(net: IncrementalNet) -> torch.Tensor:
    """``[num_classes, K, D]``: each class's proxies (K = 1 for a head with one row per class)."""
    head = net.head
    return head.proxies() if hasattr(head, "proxies") else head.full_weight().unsqueeze(1)


@torch.no_grad()
def features(net: IncrementalNet, images: torch.Tensor, normalize, batch: int = 512) -> torch.Tensor:
    net.eval()
    return torch.cat([net.features(normalize(chunk)).float() for chunk in images.split(batch)])


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (scores.argmax(1) == y).float().mean().item()


def share_to_new(scores: torch.Tensor, num_old: int) -> float:
    return 100.0 * (scores.argmax(1) >= num_old).float().mean().item()


@torch.no_grad()
def probe(run: Path) -> dict[str, float]:
    """The figures of :data:`COLUMNS` for one finished run folder."""
    prev, last = load_checkpoint(run / PREVIOUS_CHECKPOINT), load_checkpoint(run / CHECKPOINT)
    if prev.phase == last.phase and prev.teacher is not None:
        before_state = prev.teacher  # written during the last phase: its teacher is the network before it
    elif prev.phase == last.phase - 1 and prev.phase_complete:
        before_state = prev.net  # the end of the second-last phase (a last phase of one epoch)
    else:
        before_state = None
    if before_state is None or not last.phase_complete or last.phase == 0:
        raise SystemExit(f"{run}: needs a finished run of two phases or more whose {PREVIOUS_CHECKPOINT} holds the "
                         "network of the second-last phase (as a teacher or as the end of that phase)")
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    dataset = load_dataset(cfg)
    scenario = build_scenario(cfg, dataset)
    policy = dataset.augment if cfg.augment == "auto" else cfg.augment
    normalize = BatchAugment.from_policy(policy, dataset.mean, dataset.std).normalize
    before = IncrementalNet.from_checkpoint_state(before_state)
    after = IncrementalNet.from_checkpoint_state(last.net)
    num_old = before.num_classes
    x, y = scenario.test_data(scenario.phase(last.phase))
    old = y < num_old
    x, y = x[old], y[old]
    f_before, f_after = features(before, x, normalize), features(after, x, normalize)
    after_on_after = class_scores(after, f_after)
    after_on_before = class_scores(after, f_before)
    rows_before, rows_after = class_rows(before), class_rows(after)[:num_old]
    return {
        "before": accuracy(class_scores(before, f_before), y),
        "old acc": accuracy(after_on_after, y),
        "to new": share_to_new(after_on_after, num_old),
        "within old": accuracy(after_on_after[:, :num_old], y),
        "old head, new feat.": accuracy(class_scores(before, f_after), y),
        "new head, old feat.": accuracy(after_on_before, y),
        "to new (old feat.)": share_to_new(after_on_before, num_old),
        "feat. cos": F.cosine_similarity(f_before, f_after, dim=1).mean().item(),
        "row cos": F.cosine_similarity(rows_before, rows_after, dim=2).mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--group", action="store_true",
                   help="one row per variant (the folder name without its -s<seed> suffix): mean over its seeds")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, list[dict[str, float]]] = {}
    for run in args.runs:
        name = run.name.rsplit("-s", 1)[0] if args.group else run.name
        rows.setdefault(name, []).append(probe(run))
        print(f"  {run.name}: done", file=sys.stderr)
    print("| run | n | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for name, figures in rows.items():
        cells = []
        for col in COLUMNS:
            value = statistics.fmean(f[col] for f in figures)
            cells.append(f"{value:.3f}" if "cos" in col else f"{value:.2f}")
        print(f"| {name} | {len(figures)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
