"""The tools under tools/ run: benchmarks in --quick mode, the method matrix on tiny data."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(module: str) -> Any:
    """The module ``tools/<module>.py`` (tools/ is not a package: imported with it on ``sys.path`` for the call)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(ROOT / "tools"))


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bench_dispatcher_lists_every_benchmark():
    done = _run("tools/bench.py", "--list")
    assert done.returncode == 0
    for name in ("losses", "data", "loop"):
        assert f"  {name} " in done.stdout


@pytest.mark.slow
def test_bench_loop_quick(tmp_path):
    out = tmp_path / "loop.json"
    done = _run("tools/bench.py", "loop", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    names = list(figures["results"])
    assert names[0].startswith("reference") and len(names) == 4
    assert all(r["img_per_s"] > 0 for r in figures["results"].values())
    assert "ratio to reference" in done.stdout


@pytest.mark.slow
def test_method_matrix_runs_and_tabulates(tmp_path):
    import cil_data

    ds = cil_data.load_embedded()
    keep = np.concatenate([np.flatnonzero(ds.train_labels.numpy() == c)[:30] for c in range(4)])
    test = np.concatenate([np.flatnonzero(ds.test_labels.numpy() == c)[:10] for c in range(4)])
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=ds.train_images[keep, 0].numpy(), y_train=ds.train_labels[keep].numpy(),
             x_test=ds.test_images[test, 0].numpy(), y_test=ds.test_labels[test].numpy())
    out = tmp_path / "matrix"
    args = ["tools/method_matrix.py", "--preset", "embedded-lt", "--methods", "finetune", "--variant",
            "IC+KD=icarl-jioc --jioc ic", "--seeds", "1,2", "--out", str(out), "--",
            "--data", "npz", "--data-root", str(npz), "--phases", "2", "--epochs", "1", "--backbone", "resnet8",
            "--memory-per-class", "3", "--threads", "1"]
    done = _run(*args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "| finetune | 2 |" in table and "| IC+KD | 2 |" in table
    assert (out / "accuracy.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["IC+KD"]["runs"] == ["runs/IC_KD-s1", "runs/IC_KD-s2"] and summary["IC+KD"]["seeds"] == [1, 2]
    again = _run(*args)  # finished cells are skipped
    assert again.returncode == 0 and again.stdout.count(": done") == 4
    # a clone has the committed records but not the run folders: the cells count as done, the table keeps them
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "IC_KD-s1.json", "IC_KD-s2.json", "finetune-s1.json", "finetune-s2.json"]
    shutil.rmtree(out / "runs")
    (out / "table.md").unlink()
    cloned = _run(*args)
    assert cloned.returncode == 0 and cloned.stdout.count(": done (record)") == 4, cloned.stdout[-2000:]
    assert (out / "table.md").read_text() == table
    # adding a method to the folder runs only its cells and keeps the folder's other rows in the table
    common = args[args.index("--out"):]
    added = _run("tools/method_matrix.py", "--preset", "embedded-lt", "--methods", "icarl", "--seeds", "1", *common)
    assert added.returncode == 0 and added.stdout.count("icarl seed 1: ran") == 1, added.stdout[-2000:]
    table = (out / "table.md").read_text()
    assert "| finetune | 2 |" in table and "| IC+KD | 2 |" in table and "| icarl | 1 |" in table
    assert list(json.loads((out / "matrix.json").read_text())["variants"]) == ["finetune", "IC+KD", "icarl"]
    rebuilt = _run("tools/method_matrix.py", "--table-only", "--out", str(out))  # the folder's own variants
    assert rebuilt.returncode == 0 and (out / "table.md").read_text() == table


def test_method_matrix_merges_only_cells_that_compare():
    merge_matrix = _tool("method_matrix").merge_matrix
    first = merge_matrix(None, "p", [("a", ["--method", "a"])], [1, 2], ["--threads", "1"])
    both = merge_matrix(first, "p", [("b", ["--method", "b", "--x"]), ("a", ["--method", "a"])], [3, 1],
                        ["--threads", "1"])
    assert both == {"preset": "p", "variants": {"a": ["--method", "a"], "b": ["--method", "b", "--x"]},
                    "seeds": [1, 2, 3], "common_options": ["--threads", "1"]}
    with pytest.raises(SystemExit, match="preset"):
        merge_matrix(first, "q", [("b", ["--method", "b"])], [1], ["--threads", "1"])
    with pytest.raises(SystemExit, match="same options"):
        merge_matrix(first, "p", [("b", ["--method", "b"])], [1], [])
    with pytest.raises(SystemExit, match="another label"):
        merge_matrix(first, "p", [("a", ["--method", "a", "--y"])], [1], ["--threads", "1"])


def test_method_matrix_takes_run_options_with_or_without_the_double_dash():
    """`hatch run` swallows the first `--`: the run options must still reach every run, and typos must not."""
    tool = _tool("method_matrix")
    build_parser = tool.build_parser
    parse_with_common_options = tool.parse_with_common_options
    own = ["--preset", "p", "--variant", "A=icarl-jioc --jioc ic", "--out", "o"]
    for argv in ([*own, "--", "--threads", "1", "--augment", "crop"], [*own, "--threads", "1", "--augment", "crop"]):
        args, common = parse_with_common_options(build_parser(), argv)
        assert (args.preset, args.variant, str(args.out)) == ("p", ["A=icarl-jioc --jioc ic"], "o")
        assert common == ["--threads", "1", "--augment", "crop"]
    args, common = parse_with_common_options(build_parser(), [*own, "--", "--seeds", "4"])  # after --: the run's
    assert (args.seeds, common) == ("1,2,3", ["--seeds", "4"])
    for bad in (["--preset", "p", "--threads", "1", "--out", "o"], [*own, "stray"], ["--preset", "p", "--seed", "1",
                                                                                    "--out", "o", "--jobs", "2"]):
        with pytest.raises(SystemExit):
            parse_with_common_options(build_parser(), bad)


def test_method_matrix_shares_one_base_model_per_seed(tmp_path):
    import cil_data

    ds = cil_data.load_embedded()
    keep = np.concatenate([np.flatnonzero(ds.train_labels.numpy() == c)[:20] for c in range(4)])
    test = np.concatenate([np.flatnonzero(ds.test_labels.numpy() == c)[:5] for c in range(4)])
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=ds.train_images[keep, 0].numpy(), y_train=ds.train_labels[keep].numpy(),
             x_test=ds.test_images[test, 0].numpy(), y_test=ds.test_labels[test].numpy())
    out = tmp_path / "matrix"
    done = _run("tools/method_matrix.py", "--preset", "embedded-lt", "--methods", "finetune,icarl,dgr", "--seeds", "1",
                "--variant", "dgr (KD ≤ 0.5)=dgr --dgr-kd-weight-max 0.5",
                "--shared-base", "--out", str(out), "--", "--data", "npz", "--data-root", str(npz), "--phases", "2",
                "--epochs", "1", "--backbone", "resnet8", "--memory-per-class", "3", "--threads", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cached = sorted(p.name.split("-seed")[0] for p in (out / "base").iterdir())
    assert cached == ["dgr", "plain-ce"]
    log = (out / "runs-0.log").read_text()
    # finetune and dgr train and write their base; icarl and the DGR variant load them
    assert log.count("base model written to") == 2 and log.count("replaces phase 1's training") == 2
    summary = json.loads((out / "summary.json").read_text())
    first = {k: summary[k]["runs"] for k in summary}
    metrics = {k: json.loads((out / v[0] / "metrics.json").read_text()) for k, v in first.items()}
    assert metrics["icarl"]["acc_per_phase"][0] == metrics["finetune"]["acc_per_phase"][0]
    assert metrics["dgr"]["phases"][0]["epoch_losses"]  # not a plain-CE base: trained its own
    assert metrics["dgr (KD ≤ 0.5)"]["acc_per_phase"][0] == metrics["dgr"]["acc_per_phase"][0]
    assert not metrics["dgr (KD ≤ 0.5)"]["phases"][0]["epoch_losses"]


def test_dgr_ab_benchmark_against_a_git_revision(tmp_path):
    """tools/bench_dgr_ab.py loads cil-losses from a revision (here HEAD) and times both versions."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    out = tmp_path / "ab.json"
    done = _run("tools/bench.py", "dgr_ab", "HEAD", "--rounds", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "this checkout / HEAD:" in done.stdout and "per-row / this" in done.stdout
    figures = json.loads(out.read_text())
    assert set(figures["vectorised_s"]) == {"this checkout", "HEAD"} and figures["per_row_s"] > 0
    bad = _run("tools/bench_dgr_ab.py", "no-such-revision", "--rounds", "1")
    assert bad.returncode == 2 and "cannot read packages/cil-losses" in bad.stderr


def test_claims_table_in_the_readme_is_what_the_results_give():
    done = _run("tools/claims.py", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_claim_verdicts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims", ROOT / "tools" / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    v = claims.verdict
    assert claims.claim_pairs({"protocols": ["p", "q"]}) == [("p", "p"), ("q", "q")]
    assert claims.claim_pairs({"protocol_a": "p", "protocol_b": "q"}) == [("p", "q")]
    assert claims.claim_pairs({"pairs": [["p+r", "q"], ["s", "t"]]}) == [("p+r", "q"), ("s", "t")]
    with pytest.raises(SystemExit, match="names no protocol"):
        claims.claim_pairs({"id": "x"})
    assert v({1: 80.0, 2: 81.0, 3: 82.0}, {1: 70.0, 2: 71.5, 3: 72.0}, 1.0)["verdict"] == "holds"
    assert v({1: 70.0, 2: 71.0, 3: 72.0}, {1: 80.0, 2: 81.0, 3: 82.5}, 1.0)["verdict"] == "reversed"
    assert v({1: 70.0, 2: 71.0, 3: 72.0}, {1: 80.0, 2: 81.0, 3: 82.5}, -1.0)["verdict"] == "holds"  # lower is better
    noisy = v({1: 70.0, 2: 75.0, 3: 72.0}, {1: 71.0, 2: 72.0, 3: 73.0}, 1.0)
    assert noisy["verdict"] == "within noise" and noisy["signs"] == "−+−"
    assert v({1: 70.0}, {1: 60.0}, 1.0)["verdict"] == "one seed"
    assert v({}, {1: 60.0}, 1.0)["verdict"] == "no results"
    # unequal seed sets: the unpaired standard error
    unpaired = v({1: 80.0, 2: 81.0}, {2: 70.0, 3: 71.0, 4: 70.5}, 1.0)
    assert unpaired["verdict"] == "holds" and unpaired["signs"] == "+"


@pytest.mark.slow
def test_bench_run_quick_splits_every_phase(tmp_path):
    out = tmp_path / "run.json"
    done = _run("tools/bench.py", "run", "--quick", "--methods", "icarl", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    (run,) = figures["runs"]
    assert run["method"] == "icarl" and len(run["phases"]) == 2
    first, second = run["phases"]
    assert first["teacher"] == 0.0 and second["teacher"] > 0.0  # phase 1 has no teacher
    for phase in run["phases"]:
        parts = sum(phase[p] for p in ("train", "teacher", "eval", "memory", "checkpoint", "other"))
        assert abs(parts - phase["total"]) < 1e-6 and phase["eval"] > 0 and phase["memory"] > 0
    assert "× reference" in done.stdout
    outside = run["outside_phases"]  # setup, reports and the rest of the run around the phases
    assert set(outside) == {"setup", "reports", "rest"} and outside["reports"] > 0 and outside["rest"] > -1e-3
    assert sum(outside.values()) + sum(p["total"] for p in run["phases"]) == pytest.approx(run["wall_s"], abs=1e-3)
    # phase 2 (with a teacher) is compared with the reference loop that also forwards a teacher
    with_teacher = figures["reference_with_teacher"]["img_per_s"]
    assert 0 < with_teacher and second["ratio_to_reference"] == pytest.approx(second["img_per_s"] / with_teacher)
    assert first["ratio_to_reference"] == pytest.approx(first["img_per_s"] / figures["reference"]["img_per_s"])


@pytest.mark.slow
def test_bench_revisions_side_by_side_from_one_tree(tmp_path):
    """Both sides from the same checkout: two timed runs, equal metrics (one thread each), the table from --json."""
    out = tmp_path / "revisions.json"
    done = _run("tools/bench.py", "revisions", str(ROOT), str(ROOT), "--methods", "finetune", "--json", str(out),
                "--phases", "2", "--epochs", "1", "--backbone", "resnet8")  # no `--`: as `hatch run` passes it on
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["mode"] == "side by side" and figures["cil_train_args"][:2] == ["--phases", "2"]
    (pair,) = figures["runs"]
    a, b = pair["a"], pair["b"]
    for side in (a, b):
        assert side["wall_s"] > side["train_s"] > 0
        assert side["outside_train_s"] == pytest.approx(side["wall_s"] - side["train_s"])
    assert (a["avg_inc_acc"], a["last_acc"]) == (b["avg_inc_acc"], b["last_acc"])
    rebuilt = _run("tools/bench.py", "revisions", "--table-only", "--json", str(out))
    assert rebuilt.returncode == 0 and "| finetune | 1 |" in rebuilt.stdout
    assert rebuilt.stdout.strip() in done.stdout  # the table the run printed, rebuilt from its results


def test_bench_revisions_takes_run_options_with_or_without_the_double_dash():
    """`hatch run bench revisions A B -- --preset P` reaches the tool without its `--` (hatch takes the first):
    the options it does not know still go to every run, and a run's `--seed` is not taken for `--seeds`."""
    tool = _tool("bench_revisions")
    own = ["0d97c2a", "HEAD", "--methods", "icarl", "--repeats", "2"]
    for argv in ([*own, "--", "--preset", "glyphs100-lt", "--seed", "3"], [*own, "--preset", "glyphs100-lt", "--seed", "3"]):
        args, extra = tool.parse_with_common_options(tool.build_parser(), argv)
        assert (args.rev_a, args.rev_b, args.methods, args.repeats, args.seeds) == ("0d97c2a", "HEAD", "icarl", 2, "1")
        assert extra == ["--preset", "glyphs100-lt", "--seed", "3"]
    args, extra = tool.parse_with_common_options(tool.build_parser(), [*own, "--", "--repeats", "5"])
    assert (args.repeats, extra) == (2, ["--repeats", "5"])  # after `--`: the run's, whatever its name
    with pytest.raises(SystemExit):  # a run option between the tool's own is refused, as a typo would be
        tool.parse_with_common_options(tool.build_parser(), ["A", "B", "--preset", "p", "--methods", "icarl"])


def test_bench_revisions_side_options_reach_one_side_only(tmp_path, monkeypatch, capsys):
    """``--args-a``/``--args-b``: one commit, two configurations; each side's runs get its own options after the
    common ones, and the results and the table say which side had which."""
    tool = _tool("bench_revisions")
    seen: dict[str, list[list[str]]] = {}

    def fake_run(tree, argv, out, threads):
        seen.setdefault(out.name[-1], []).append(argv)
        return {"wall_s": 2.0, "train_s": 1.0, "outside_train_s": 1.0, "avg_inc_acc": 50.0, "last_acc": 40.0}

    monkeypatch.setattr(tool, "timed_run", fake_run)
    out = tmp_path / "r.json"
    argv = [str(ROOT), str(ROOT), "--methods", "icarl", "--seeds", "1,2", "--json", str(out),
            "--args-a=--compile off", "--args-b", "--compile on --fold-bn", "--", "--epochs", "3"]
    assert tool.main(argv) == 0
    assert seen["a"] == [["--epochs", "3", "--compile", "off", "--method", "icarl", "--seed", s] for s in "12"]
    assert seen["b"] == [["--epochs", "3", "--compile", "on", "--fold-bn", "--method", "icarl", "--seed", s]
                         for s in "12"]
    figures = json.loads(out.read_text())
    assert (figures["cil_train_args"], figures["cil_train_args_a"], figures["cil_train_args_b"]) == (
        ["--epochs", "3"], ["--compile", "off"], ["--compile", "on", "--fold-bn"])
    header = tool.table(figures).splitlines()[0]
    assert " (--compile off), B = " in header and header.endswith("(--compile on --fold-bn); side by side, 1 thread(s) "
                                                                  "a run; cil-train --epochs 3")
    assert "(--compile on --fold-bn) 2.0 s" in capsys.readouterr().out  # the progress lines name the side too


def test_bench_revisions_reports_a_failing_run(tmp_path):
    out = tmp_path / "revisions.json"
    done = _run("tools/bench.py", "revisions", str(ROOT), str(ROOT), "--methods", "no-such-method", "--alternate",
                "--json", str(out))
    assert done.returncode == 1
    (pair,) = json.loads(out.read_text())["runs"]
    assert "error" in pair["a"] and "error" in pair["b"]
    assert "| no-such-method | 1 | error: " in done.stdout


def test_bench_revisions_table_from_results():
    tool = _tool("bench_revisions")

    def side(wall, train, acc, nme=None):
        return {"wall_s": wall, "train_s": train, "outside_train_s": wall - train, "avg_inc_acc": acc,
                "last_acc": acc, **({"nme_avg_inc_acc": nme} if nme is not None else {})}

    def pair(method, seed, repeat, a, b):
        return {"method": method, "seed": seed, "repeat": repeat, "a": a, "b": b}

    runs = [pair("icarl", 1, 0, side(12.0, 10.0, 70.0, 75.0), side(10.0, 9.0, 71.0, 74.0)),
            pair("icarl", 2, 0, side(18.0, 15.0, 72.0, 77.0), side(10.0, 8.0, 73.0, 78.0)),
            pair("icarl", 1, 1, side(30.0, 20.0, 70.0, 75.0), side(20.0, 19.0, 71.0, 74.0)),
            pair("dgr", 1, 0, side(5.0, 4.0, 60.0), {"wall_s": 1.0, "error": "boom"})]
    text = tool.table({"commit_a": "aaa", "commit_b": "bbb", "mode": "side by side", "threads": 1,
                       "cil_train_args": ["--epochs", "1"], "methods": ["icarl", "dgr"], "runs": runs})
    assert text.startswith("A = aaa, B = bbb; side by side, 1 thread(s) a run; cil-train --epochs 1")
    # walls: A 20.0, B 13.33 -> 1.50x (mean over mean); the pairs' ratios 1.2, 1.8, 1.5; accuracies over seeds only
    assert ("| icarl | 3 | 20.0 s | 13.3 s | **1.50×** (1.20–1.80×) | 15.0 → 12.0 s | 5.0 → 1.3 s | "
            "71.00 ± 1.41 (NME 76.00 ± 1.41) | 72.00 ± 1.41 (NME 76.00 ± 2.83) |") in text
    assert "| dgr | 1 | error: boom |" in text


def test_readme_revisions_tables_are_the_committed_results():
    """Each results/speed/revisions-*.json is in the README as ``bench revisions --table-only`` prints it."""
    tool = _tool("bench_revisions")
    readme = (ROOT / "README.md").read_text()
    results = sorted((ROOT / "results" / "speed").glob("revisions-*.json"))
    assert results
    for path in results:
        assert tool.table(json.loads(path.read_text())) in readme, path.name


def test_revision_checkout_of_a_folder_and_of_a_commit(tmp_path):
    tool = _tool("compare_revisions")
    with tool.checkout(str(ROOT), tmp_path / "unused") as tree:
        assert tree == ROOT.resolve() and not (tmp_path / "unused").exists()
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    where = tmp_path / "tree"
    with tool.checkout("HEAD", where) as tree:
        assert (tree / "packages" / "cil-train" / "src" / "cil_train" / "cli.py").is_file()
        env = tool.packages_env(tree, threads=2)
        assert env["OMP_NUM_THREADS"] == "2" and str(tree / "packages" / "cil-losses" / "src") in env["PYTHONPATH"]
    assert not where.exists()


def test_an_unknown_revision_is_a_clear_error_before_any_run(tmp_path, capsys):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    compare = _tool("compare_revisions")
    compare.check_revision("HEAD")
    compare.check_revision(str(tmp_path))  # a folder is taken as it is
    with pytest.raises(compare.CheckoutError, match="no-such-revision"):
        compare.check_revision("no-such-revision")
    with pytest.raises(compare.CheckoutError, match="no-such-revision"):
        with compare.checkout("no-such-revision", tmp_path / "tree"):
            pass
    assert not (tmp_path / "tree").exists()
    for tool, argv in ((_tool("bench_revisions"), ["HEAD", "no-such-revision", "--json", str(tmp_path / "r.json")]),
                       (compare, ["no-such-revision", "HEAD"])):
        with pytest.raises(SystemExit) as stop:
            tool.main(argv)
        assert stop.value.code == 2
        assert "'no-such-revision' is neither a folder nor a commit" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_bench_bound_quick(tmp_path):
    out = tmp_path / "bound.json"
    done = _run("tools/bench.py", "bound", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    rows = figures["results"]
    assert set(rows) == {"step with a teacher", "its convolutions alone", "step, no teacher",
                         "its convolutions alone, no teacher"}
    ref = figures["reference_with_teacher"]["img_per_s"]
    for r in rows.values():
        assert r["img_per_s"] > 0 and r["ratio_to_reference_with_teacher"] == pytest.approx(r["img_per_s"] / ref)
    share = rows["step with a teacher"]["img_per_s"] / rows["its convolutions alone"]["img_per_s"]
    assert figures["convolution_share"] == pytest.approx(share)
    assert "convolutions are" in done.stdout


def test_bench_bound_times_every_convolution_of_the_network():
    import torch
    from torch import nn

    bound = _tool("bench_bound")
    net = bound._network("resnet8", (1, 28, 28), 10)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    convs = bound.convolutions_of(net, x, torch.bfloat16)
    assert [c for c, _, _ in convs] == [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(shape[0] == 4 and shape[1] == conv.in_channels for conv, shape, _ in convs)
    assert convs[0][2] == torch.float32 and all(d == torch.bfloat16 for _, _, d in convs[1:])  # autocast's casts
    # the student's part runs the backward of every convolution: weights, and inputs after the first
    weight_grads = []
    for conv, _, _ in convs:
        conv.weight.register_hook(lambda g: weight_grads.append(g.shape))
    step = bound.convolutions_of_step(net, x, torch.bfloat16, teacher=True)
    step()
    assert sorted(weight_grads) == sorted(conv.weight.shape for conv, _, _ in convs)
    assert all(conv.weight.grad is None for conv, _, _ in convs)  # cleared for the next step


def test_bench_eval_quick(tmp_path):
    out = tmp_path / "eval.json"
    done = _run("tools/bench.py", "eval", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    rows = {(r["batch"], r["fold_bn"]): r for r in figures["results"]}
    assert set(rows) == {(64, False), (64, True), (512, False), (512, True)}
    assert rows[(512, False)]["ratio"] == pytest.approx(1.0) and all(r["img_per_s"] > 0 for r in rows.values())
    assert "× reference" in done.stdout and figures["image_shape"] == [1, 28, 28]


def test_bench_eval_on_an_npz(tmp_path):
    g = np.random.default_rng(0)
    npz = tmp_path / "rgb.npz"
    np.savez(npz, x_train=g.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=np.arange(40) % 4,
             x_test=g.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_test=np.arange(8) % 4)
    out = tmp_path / "eval.json"
    done = _run("tools/bench.py", "eval", "--quick", "--npz", str(npz), "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["image_shape"] == [3, 32, 32] and figures["images"] == 40


def test_bench_partial_quick(tmp_path):
    out = tmp_path / "partial.json"
    done = _run("tools/bench.py", "partial", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())["results"]
    assert r["whole_s"] > 0 and r["head_s"] > 0 and r["whole_over_head"] == pytest.approx(r["whole_s"] / r["head_s"])
    assert r["max_abs_diff"] == 0.0  # the frozen backbone changes no gradient of the head
    assert "whole/head" in done.stdout


@pytest.mark.slow
def test_bench_methods_small(tmp_path):
    out = tmp_path / "methods.json"
    done = _run("tools/bench.py", "methods", "--methods", "finetune,icarl,podnet,der", "--per-class", "8",
                "--test-per-class", "2", "--backbone", "resnet8", "--growth-phases", "2", "--json", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert {"finetune", "icarl", "podnet", "der"} <= set(figures["phase2"])
    assert set(figures["growth"]) == {"der"} and len(figures["growth"]["der"]) == 2  # one row per phase


def test_bench_methods_gives_each_method_only_stage_options_it_reads():
    """Every registered method accepts the extra-stage epochs the benchmark gives it (an option the method's
    other options leave unread is a ConfigError, e.g. --der-balanced-epochs with DER's default WA correction)."""
    extra_stage_options = _tool("bench_methods").extra_stage_options
    from cil_train.cli import build_parser, config_from_args
    from cil_train.methods import methods

    for name in methods():
        argv = extra_stage_options(name, 2)
        config_from_args(build_parser().parse_args(["--method", name, "--backbone", "resnet8", *argv]))
    assert extra_stage_options("der", 2) == [] and extra_stage_options("podnet-bsce", 2) == []
    assert extra_stage_options("podnet", 2) == ["--podnet-finetune-epochs", "2"]


def test_run_times_of_the_committed_matrices(tmp_path):
    folder = tmp_path / "proto"
    folder.mkdir()
    (folder / "matrix.json").write_text(json.dumps({"preset": "glyphs100-lt"}))
    (folder / "summary.json").write_text(json.dumps({
        "icarl": {"wall_seconds": {"values": [600.0, 1200.0]}},
        "icarl (NME)": {"wall_seconds": {"values": [600.0, 1200.0]}}}))
    done = _run("tools/run_times.py", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "| proto | `glyphs100-lt` | 2 | 15.0 min | 0.5 h |" in done.stdout and "| all | | 2 | | 0.5 h |" in done.stdout


def test_run_time_table_in_the_readme_is_what_the_results_give():
    done = _run("tools/run_times.py", "--check")
    assert done.returncode == 0, done.stderr


def test_phase_gap_reads_the_committed_records():
    phase_data = _tool("phase_gap").phase_data
    # counts and memory by position in the stream (incremental label), whatever the original labels' order
    metrics = {"train_counts": [30, 50, 40, 8, 6], "class_order": [3, 0, 4, 1, 2], "increments": [2, 2, 1],
               "memory_per_class": [20, 20, 20, 8, 6]}
    assert phase_data(metrics) == [{"per_new_class": 40.0, "new_images": 80, "memory": 0, "seen_per_new": 0.0},
                                   {"per_new_class": 24.0, "new_images": 48, "memory": 40, "seen_per_new": 80 / 48},
                                   {"per_new_class": 6.0, "new_images": 6, "memory": 68, "seen_per_new": 128 / 6}]
    done = _run("tools/phase_gap.py", "results/glyphs100-lt-ordered-fair", "dgr", "icarl")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 10 and rows[0].split("|")[4].strip() == "0"  # no exemplars before phase 2
    bad = _run("tools/phase_gap.py", "results/glyphs100-lt-ordered-fair", "dgr", "nope")
    assert bad.returncode != 0 and "no variant 'nope'" in bad.stderr


@pytest.mark.parametrize("epochs", ["1", "2"])  # "before" from the end of the second-last phase / the teacher
def test_last_phase_drift_recomputes_the_run_s_own_figures(tmp_path, epochs):
    """tools/last_phase_drift.py on a finished PODNet run: its 'before' and 'old acc' are the run's own accuracy
    of the second-last phase and old-class accuracy of the last one (float32 both, so equal up to an image)."""
    import cil_data
    from cil_train.cli import main as train

    ds = cil_data.load_embedded()
    keep = np.concatenate([np.flatnonzero(ds.train_labels.numpy() == c)[:20] for c in range(6)])
    test = np.concatenate([np.flatnonzero(ds.test_labels.numpy() == c)[:10] for c in range(6)])
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=ds.train_images[keep, 0].numpy(), y_train=ds.train_labels[keep].numpy(),
             x_test=ds.test_images[test, 0].numpy(), y_test=ds.test_labels[test].numpy())
    run = tmp_path / "run"
    assert train(["--method", "podnet-bsce-relaxed", "--podnet-proxies", "2", "--data", "npz", "--data-root", str(npz),
                  "--phases", "3", "--epochs", epochs, "--backbone", "resnet8", "--amp", "off", "--progress", "none",
                  "--no-plots", "--threads", "1", "--out", str(run)]) == 0
    drift = _tool("last_phase_drift")
    figures = drift.probe(run)
    metrics = json.loads((run / "metrics.json").read_text())
    one_image = 100.0 / 40 + 1e-9  # 40 test images of the 4 old classes
    assert abs(figures["before"] - metrics["acc_per_phase"][1]) <= one_image
    assert abs(figures["old acc"] - metrics["old_acc"][2]) <= one_image
    assert 0.0 <= figures["to new"] <= 100.0 and -1.0 <= figures["feat. cos"] <= 1.0
    assert figures["within old"] >= figures["old acc"]  # restricting the argmax to the old classes only helps
    done = _run("tools/last_phase_drift.py", str(run))
    assert done.returncode == 0 and "| run | n | before | old acc |" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_device_checks_script_runs_its_steps_tiny_on_the_cpu(tmp_path):
    """tools/device_checks.sh, prepared and run as on a GPU machine but QUICK on the CPU: every step passes and
    what comes back fits the device tool's limits (at most 8 files, plain names, one folder)."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    npz = tmp_path / "glyphs100.npz"
    npz.write_bytes(b"stand-in: the quick steps run on the embedded data")
    prepared, out = tmp_path / "prepared", tmp_path / "out"
    env = {**os.environ, "DEVICE_DIR": str(prepared), "GLYPHS100": str(npz), "OUT": str(out), "QUICK": "1",
           "DEVICE": "cpu", "PY": sys.executable}
    done = subprocess.run(["bash", "tools/device_checks.sh", "--prepare", "HEAD"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (prepared / "HEAD" / "packages" / "cil-train" / "src" / "cil_train" / "cli.py").is_file()
    assert (prepared / "before").read_text().strip() == "HEAD"
    done = subprocess.run(["bash", "tools/device_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    log = (out / "log.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["env.txt", "log.txt", "revisions-dgr.json", "revisions-icarl.json", "run-off.json", "smoke.json"]
    assert all(p.is_file() for p in out.iterdir()) and len(names) <= 8
    for method in ("icarl", "dgr"):
        figures = json.loads((out / f"revisions-{method}.json").read_text())
        assert figures["commit_a"] == "HEAD" and figures["mode"] == "alternate"
        (pair,) = figures["runs"]
        assert "error" not in pair["a"] and "error" not in pair["b"]
    assert json.loads((out / "smoke.json").read_text())["phases"]
    assert "| dgr |" in log and "exit 0" in log
