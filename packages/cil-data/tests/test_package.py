"""Package-level checks: the public API, the narrow dependencies, the benchmark smoke run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cil_data

BENCH = Path(__file__).resolve().parents[3] / "tools" / "bench_data.py"


def test_public_api_is_exported() -> None:
    for name in cil_data.__all__:
        assert hasattr(cil_data, name), name
    for name in ("load_embedded", "load_fashion_mnist", "load_cifar", "load_npz", "load_image_folder",
                 "long_tail_counts", "long_tail_indices", "class_order", "phase_increments", "IncrementalScenario",
                 "Phase", "MemoryBudget", "ExemplarMemory", "herding_order", "RatioPreservingSampler",
                 "class_balanced_indices", "balanced_validation_split", "BatchAugment"):
        assert name in cil_data.__all__, name


def test_import_pulls_in_no_models_losses_vision_or_pillow() -> None:
    code = (
        "import sys, cil_data; "
        "bad = [m for m in ('cil_models', 'cil_losses', 'cil_train', 'torchvision', 'PIL') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.skipif(not BENCH.is_file(), reason="tools/ is not part of an installed package")
def test_benchmark_quick(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_data", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    assert module.main(["--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"].split()[0] for r in rows] == ["herding", "herding", "memory", "memory"]
    assert all(r["ours_s"] > 0 and r["reference_s"] > 0 for r in rows)
