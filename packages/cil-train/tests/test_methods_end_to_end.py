"""Every method runs 3 phases on tiny real data and leaves a complete run folder."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cil_train.cli import main
from cil_train.methods import methods

METHODS = methods()

METRIC_KEYS = {"acc_per_phase", "avg_inc_acc", "last_acc", "acc_matrix", "forgetting", "old_acc", "new_acc",
               "imbalance_score", "many_medium_few", "wall_seconds", "confusion_matrix", "weight_norms"}

VARIANTS = [
    ("finetune",), ("il-baseline",), ("il-baseline", "--il-correction", "balanced-finetuning"), ("bsce",), ("bsce-meta", "--meta-interval", "2"), ("bsce-relaxed",), ("lwf",),
    ("icarl",), ("icarl-jioc",), ("icarl-jioc", "--jioc", "ic"), ("icarl-jioc", "--jioc", "oc"), ("wa", "--wa-clip"), ("bic", "--bic-bias-epochs", "3"),
    ("ssil", "--ssil-batch-new", "16", "--ssil-batch-memory", "8"),
    ("ssil", "--ssil-batch-new", "16", "--ssil-batch-memory", "8", "--ssil-kd", "none", "--no-ssil-separated",
     "--no-ssil-ratio-preserving", "--ssil-schedule", "run"), ("dgr",), ("dgr", "--no-dgr-dakd", "--no-dgr-decouple"),
    ("dgr", "--dgr-offsets", "grad"), ("dgr", "--no-dgr-regularized-softmax"),
    ("lucir",), ("lucir", "--lucir-cbf", "--lucir-cbf-epochs", "1"), ("lucir-bsce",), ("lucir-bsce-relaxed",),
    ("podnet", "--podnet-proxies", "3", "--podnet-finetune-epochs", "1"), ("podnet-bsce",),
    ("podnet-bsce-relaxed", "--podnet-proxies", "2"),
    ("podnet", "--podnet-nca", "paper", "--podnet-finetune-epochs", "0"),  # NCA is podnet's alone (not -bsce's)
    ("der",), ("der-jioc", "--jioc", "oc"), ("foster", "--foster-compression-epochs", "1"), ("foster-jioc",),
]


def drop_option(argv: list[str], name: str) -> None:
    i = argv.index(name)
    del argv[i : i + 2]


def test_every_method_has_a_variant():
    assert {v[0] for v in VARIANTS} == set(METHODS)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(x.strip("-") for x in v))
def test_method_runs_three_phases(tiny, variant):
    method, *options = variant
    argv, out = tiny("--method", method, *options)
    if METHODS[method].memory == "none":  # exemplar-free methods refuse memory options
        drop_option(argv, "--memory-per-class")
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and METRIC_KEYS <= set(m)
    assert len(m["acc_per_phase"]) == 3 and all(0.0 <= a <= 100.0 for a in m["acc_per_phase"])
    assert len(m["acc_matrix"]) == 3 and m["acc_matrix"][0][1] is None
    assert len(m["weight_norms"]) == 6 and len(m["confusion_matrix"]) == 6
    assert sum(map(sum, m["confusion_matrix"])) == 60  # every test image of the 6 classes, once
    assert m["imbalance_score"][0] is None and m["imbalance_score"][1] is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == method
    with (out / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert (out / "checkpoint.pt").is_file()
    memory = list((out / "memory").glob("*.h5")) if (out / "memory").exists() else []
    if METHODS[method].memory == "none":
        assert memory == [] and m["memory_per_class"] == []
    else:
        assert len(memory) == 1 and sum(m["memory_per_class"]) == m["phases"][-1]["memory_after"] > 0
    if "nme" in METHODS[method].evaluation:
        assert m["nme"]["last_acc"] is not None


def test_plots_are_written(tiny):
    pytest.importorskip("matplotlib", reason="plots need the 'plots' extra (matplotlib)")
    argv, out = tiny("--method", "finetune", "--plots")
    assert main(argv) == 0
    for name in ("accuracy.png", "accuracy_matrix.png", "confusion_matrix.png", "weight_norms.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name


def test_without_matplotlib_the_run_says_which_plots_it_skipped(tiny, monkeypatch, capsys):
    from cil_train import report

    monkeypatch.setattr(report, "_matplotlib", lambda: None)
    argv, out = tiny("--method", "finetune", "--plots")
    assert main(argv) == 0
    assert "plots skipped: matplotlib is not installed" in capsys.readouterr().out
    assert (out / "metrics.json").is_file() and not list(out.glob("*.png"))


def test_memory_total_budget_is_respected(tiny):
    argv, out = tiny("--method", "finetune", "--memory-total", "12")
    drop_option(argv, "--memory-per-class")
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert sum(m["memory_per_class"]) <= 12 and min(m["memory_per_class"]) >= 1


def test_nan_loss_stops_the_run_and_keeps_the_checkpoint(tiny, monkeypatch, capsys):
    from cil_train.methods.finetune import Finetune

    original = Finetune.loss

    def poisoned(self, ctx, batch):
        loss, figures = original(self, ctx, batch)
        return (loss * float("nan") if ctx.t == 1 else loss), figures

    monkeypatch.setattr(Finetune, "loss", poisoned)
    argv, out = tiny("--method", "finetune")
    assert main(argv) == 3
    err = " ".join(capsys.readouterr().err.split())  # the message is one wrapped paragraph
    assert "nan" in err.lower() and "last good checkpoint" in err and "phase 2" in err
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["phase"] == 0 and state["phase_complete"]  # the end of phase 1, before the NaN


def test_compare_groups_seeds(tiny, tmp_path, capsys):
    folders = []
    for seed in ("1", "2"):
        argv, out = tiny("--method", "finetune", "--seed", seed, "--epochs", "1", out=f"s{seed}")
        assert main(argv) == 0
        folders.append(str(out))
    argv, out = tiny("--method", "icarl-jioc", "--jioc", "ic", "--epochs", "1", out="jioc")
    assert main(argv) == 0
    cmp = tmp_path / "cmp"
    assert main(["compare", *folders, str(out), "--out", str(cmp), "--title", "tiny"]) == 0
    table = (cmp / "comparison.md").read_text()
    assert "| finetune | 2 |" in table and "| icarl-jioc[jioc=ic] | 1 |" in table and "±" in table
    summary = json.loads((cmp / "comparison.json").read_text())
    assert summary["finetune"]["seeds"] == [1, 2]
    # iCaRL's own classifier (nearest mean of exemplars) gets its row beside the CNN's
    nme = json.loads((out / "metrics.json").read_text())["nme"]
    assert list(summary) == ["finetune", "icarl-jioc[jioc=ic]", "icarl-jioc[jioc=ic] (NME)"]
    assert summary["icarl-jioc[jioc=ic] (NME)"]["avg_inc_acc"]["values"] == [nme["avg_inc_acc"]]
    assert summary["icarl-jioc[jioc=ic] (NME)"]["last_new_acc"]["values"] == [nme["new_acc"][-1]]
    assert nme["forgetting"] is not None and len(nme["old_acc"]) == 3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (cmp / "comparison.png").exists()
    else:
        assert (cmp / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_dgr_records_its_kd_weight_and_the_cap_bounds_it(tiny):
    argv, out = tiny("--method", "dgr", "--epochs", "1")
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    counts, start = m["train_counts"], 0  # by position in the stream
    expected = []
    for n in m["increments"]:
        seen, new = sum(counts[:start]), sum(counts[start:start + n])
        expected.append(0.7 * (seen / new) ** 0.5 if start else None)
        start += n
    assert "kd_weight" not in m["phases"][0]
    got = [p["kd_weight"] for p in m["phases"][1:]]
    assert got == pytest.approx(expected[1:]) and min(got) > 0.3
    argv, out = tiny("--method", "dgr", "--epochs", "1", "--dgr-kd-weight-max", "0.3", out="capped")
    assert main(argv) == 0
    capped = [p["kd_weight"] for p in json.loads((out / "metrics.json").read_text())["phases"][1:]]
    assert capped == pytest.approx([0.3] * len(got))


def test_dgr_task_balance_rule_is_recorded_and_switches_per_phase(tiny):
    # 12 exemplars per class: the second phase's new images outnumber the memory, the third's do not
    argv, out = tiny("--method", "dgr", "--epochs", "1", "--memory-per-class", "12", out="always")
    assert main(argv) == 0
    phases = json.loads((out / "metrics.json").read_text())["phases"]
    assert "task_balance" not in phases[0]
    for p in phases[1:]:
        assert p["task_balance"] == 1.0
        assert 0.0 < p["task_balance_r_new"] <= 1.0 and 0.0 < p["task_balance_r_old"] <= 1.0
    exceeds = [p["train_images"] > p["exemplars"] for p in phases[1:]]
    assert exceeds == [True, False]  # the setting below is tested on both branches
    results = {}
    for rule in ("never", "while-new-exceeds-memory"):
        argv, out = tiny("--method", "dgr", "--epochs", "1", "--memory-per-class", "12",
                         "--dgr-task-balance", rule, out=rule)
        assert main(argv) == 0
        results[rule] = json.loads((out / "metrics.json").read_text())
    assert [p["task_balance"] for p in results["never"]["phases"][1:]] == [0.0, 0.0]
    probe = results["while-new-exceeds-memory"]
    assert [p["task_balance"] for p in probe["phases"][1:]] == [1.0, 0.0]
    # up to the first phase where the rule drops the ratio, the probe's run is the paper's run
    paper = json.loads((out.parent / "always" / "metrics.json").read_text())
    assert probe["acc_matrix"][1] == pytest.approx(paper["acc_matrix"][1])
