"""The command's entry point tunes the garbage collector for one run; ``main`` called in-process does not."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest

import cil_train.cli as cli


def test_main_in_process_leaves_the_collector_alone(tiny):
    argv, out = tiny("--phases", "2", "--epochs", "1")
    frozen = gc.get_freeze_count()
    assert cli.main(argv) == 0
    assert gc.get_freeze_count() == frozen and gc.isenabled()
    assert json.loads((out / "metrics.json").read_text())["acc_per_phase"]


def test_console_main_settles_the_imports_and_freezes_before_exit(tiny, monkeypatch):
    argv, out = tiny("--phases", "2", "--epochs", "1")
    settled = []
    real = cli._settle_imports
    monkeypatch.setattr(cli, "_settle_imports", lambda: settled.append(gc.isenabled()) or real())
    monkeypatch.setattr(sys, "argv", ["cil-train", *argv])
    frozen = gc.get_freeze_count()
    try:
        assert cli.console_main() == 0
        assert gc.get_freeze_count() > frozen and gc.isenabled()
    finally:
        gc.unfreeze()  # this test process goes on: let the collector see the run's objects again
    assert settled == [True]
    assert json.loads((out / "metrics.json").read_text())["acc_per_phase"]
    # --help and errors exit before anything is settled
    monkeypatch.setattr(sys, "argv", ["cil-train", "--phases", "0"])
    try:
        assert cli.console_main() == 2
    finally:
        gc.unfreeze()
    assert settled == [True]


def test_the_command_runs_console_main():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["cil-train"] == "cil_train.cli:console_main"
    assert "console_main()" in (Path(cli.__file__).parent / "__main__.py").read_text()
