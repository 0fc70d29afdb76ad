"""The CPU presets build their streams; glyphs100 (../shared, developers only) skips cleanly elsewhere."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cil_train.cli import build_parser, config_from_args
from cil_train.data import build_scenario, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_glyphs100_presets_build_the_protocol(shared_data, monkeypatch):
    monkeypatch.chdir(ROOT)  # the presets name ../shared/data/glyphs100.npz relative to the repository
    for preset, first in (("glyphs100-lt", None), ("glyphs100-lt-ordered", list(range(10)))):
        cfg = _cfg("--preset", preset)
        ds = load_dataset(cfg)
        assert ds.num_classes == 100 and ds.image_shape == (1, 32, 32) and len(ds.test_labels) == 21300
        sc = build_scenario(cfg, ds)
        assert sc.num_phases == 10 and list(sc.increments) == [10] * 10
        counts = sc.train_counts
        assert int(counts.max()) == 841 and int(counts.min()) == 8  # ρ = 100 over 841 images per class
        if first is not None:
            assert list(sc.class_order[:10]) == first


def test_embedded_default_stream():
    cfg = _cfg()
    sc = build_scenario(cfg, load_dataset(cfg))
    assert sc.num_phases == 5 and int(sc.train_counts.sum()) == 2448
    assert sorted(sc.train_counts.tolist(), reverse=True)[0] == 600


def test_fashion_mnist_preset_uses_the_debian_files():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    cfg = _cfg("--preset", "fmnist-lt-5x2-m1000")
    sc = build_scenario(cfg, load_dataset(cfg))
    assert sc.num_phases == 5 and int(sc.train_counts.max()) == 6000 and int(sc.train_counts.min()) == 247
    assert cfg.memory_total == 1000 and cfg.memory_per_class is None


def test_hatch_scripts_named_in_the_readme_exist():
    scripts = tomllib.loads((ROOT / "hatch.toml").read_text())["envs"]["default"]["scripts"]
    readme = (ROOT / "README.md").read_text()
    for name in ("train", "test", "bench", "compare"):
        assert name in scripts and f"hatch run {name}" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pip install hatch && hatch run test" in ci and "python3 -m pip install hatch && hatch run test" in readme
