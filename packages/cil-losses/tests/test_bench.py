"""The benchmark script runs (a few-second smoke run) and writes its figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "tools" / "bench_losses.py"


@pytest.fixture
def bench():
    """tools/bench_losses.py as a module (a fresh one per test)."""
    spec = importlib.util.spec_from_file_location("bench_losses_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not BENCH.exists(), reason="tools/bench_losses.py is not part of this checkout")
def test_quick_benchmark_writes_json(tmp_path, bench):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--default-malloc", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["steady_malloc"] is False
    names = {row["loss"] for row in data["losses"]}
    assert "cross_entropy (reference)" in names and "balanced_softmax_cross_entropy" in names
    assert all(row["ratio_to_ce"] > 0 for row in data["losses"])
    assert {row["tasks"] for row in data["task_wise_kd"]} == {10}
    assert {row["losses"] for row in data["dgr"]} == {"dakd", "linear", "rewrite"}
    assert all(row["speedup"] > 0 for row in data["dgr"])
    (step,) = data["step"]                                   # DGR in a whole training step (quick: ResNet-8)
    assert step["classes"] == 100 and step["depth"] == 8 and step["ratio"] > 0
    assert "DGR whole step <= 1.10x CE+KD step at C=100" in data["goals"]


@pytest.mark.skipif(not BENCH.exists(), reason="tools/bench_losses.py is not part of this checkout")
def test_quick_benchmark_runs_only_the_sections_asked_for_and_the_breakdown(tmp_path, bench):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--default-malloc", "--sections", "dgr", "--breakdown", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["losses"] == [] and data["task_wise_kd"] == []
    assert {row["losses"] for row in data["dgr"]} == {"dakd", "linear", "rewrite"}
    parts = {row["part"]: row["seconds"] for row in data["dgr_breakdown"]}
    assert set(parts) == {"per_row", "vectorised", "no_reweighting", "plain", "losses", "matmuls"}
    assert all(t > 0 for t in parts.values())
    after = {row["before"]: row for row in data["dgr_after"]}
    assert set(after) == {"nothing", "python", "sweep", "per_row"}
    assert all(row["seconds"] > 0 and row["per_row_ratio"] > 0 for row in after.values())
    assert all("BalancedS-CE" not in name for name in data["goals"])


@pytest.mark.skipif(not BENCH.exists(), reason="tools/bench_losses.py is not part of this checkout")
def test_quick_benchmark_over_several_runs_reports_medians_and_ranges(tmp_path, bench):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--default-malloc", "--runs", "3", "--sections", "losses", "dgr",
                        "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["runs"] == 3 and len(data["per_run"]) == 3
    for row in data["losses"]:
        same = sorted(run["losses"][i]["ratio_to_ce"] for run in data["per_run"]
                      for i, r in enumerate(run["losses"]) if r["loss"] == row["loss"])
        assert row["ratio_to_ce"] == same[1]                               # the median of the three runs
        assert (row["ratio_to_ce_min"], row["ratio_to_ce_max"]) == (same[0], same[2])
    assert all(row["speedup_min"] <= row["speedup"] <= row["speedup_max"] for row in data["dgr"])
    assert set(data["goals_met_in_runs"]) == set(data["goals"])
    assert all(0 <= n <= 3 for n in data["goals_met_in_runs"].values())
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--runs", "0"])
