"""Adding a method: the README's example runs verbatim, a plug-in package adds a method through the
``cil_train.methods`` entry-point group, and method options are checked per method."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cil_train.cli import main
from cil_train.methods import methods

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_method_block() -> str:
    text = README.read_text()
    section = text[text.index("## Adding a method"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_method_runs_verbatim(tiny, capsys):
    code = _readme_method_block()
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert "distill-balance" in methods()
    argv, out = tiny("--method", "distill-balance", "--kd-weight", "2", "--balance-epochs", "1")
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and len(m["acc_per_phase"]) == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_options"] == {"kd_temperature": 2.0, "kd_weight": 2.0, "balance_epochs": 1}
    # phases 2 and 3 train 2 main epochs + 1 balanced epoch: three epoch losses each
    assert [len(p["epoch_losses"]) for p in m["phases"]] == [2, 3, 3]
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "distill-balance" in capsys.readouterr().out


def test_method_options_belong_to_their_method(capsys):
    assert main(["--method", "finetune", "--ssil-batch-new", "8", "--out", "/nonexistent/x"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--ssil-batch-new is an option of ssil, not of --method finetune" in err


PLUGIN = '''
import attrs
import torch.nn.functional as F

from cil_train.methods import Method
from cil_train.options import boolean, option


@attrs.frozen(kw_only=True)
class Options:
    plain_twice: bool = option("count the loss twice", boolean, False)


class PlainPlugin(Method):
    name = "plain-plugin"
    summary = "cross-entropy from an installed plug-in package"
    Options = Options

    def loss(self, ctx, batch):
        loss = F.cross_entropy(ctx.net(batch.x).float(), batch.y)
        return (2 * loss if self.options.plain_twice else loss), {}
'''


@pytest.fixture
def plugin_path(tmp_path) -> Path:
    """A package installed only as files on a path: its module and its dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "cil_plugin_example").mkdir(parents=True)
    (site / "cil_plugin_example" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "cil_plugin_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cil-plugin-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cil_train.methods]\nplain-plugin = cil_plugin_example:PlainPlugin\n")
    return site


def test_an_installed_package_adds_a_method_through_the_entry_point(plugin_path, tiny_argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    shown = subprocess.run([sys.executable, "-m", "cil_train", "--help"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and "plain-plugin" in shown.stdout and "--plain-twice" in shown.stdout
    out = tmp_path / "plugin-run"
    done = subprocess.run([sys.executable, "-m", "cil_train", *tiny_argv(out, "--method", "plain-plugin",
                                                                         "--plain-twice", "--epochs", "1")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["complete"]
    assert json.loads((out / "config.json").read_text())["method_options"] == {"plain_twice": True}
