"""Every ```python block of every package README runs as written.

One test per README: its python blocks run **in order, in one namespace** (a later block may use what an
earlier one defined, as a reader going down the page would), in a fresh temporary working directory, so that
files a snippet writes land there. A block that must not run is fenced ```text or ```bash instead. A block
that reads ``../shared/data`` is skipped, with the reason, when that folder is absent (developers and CI only);
``../shared`` resolves to the workspace's sibling folder as it does from the repository root.

A README whose blocks do not run yet would be marked ``xfail`` in ``XFAIL`` below (non-strict); today every
package README runs as written.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
READMES = sorted(ROOT.glob("packages/*/README.md"))
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

#: README -> reason: known not to run as written yet
XFAIL: dict[str, str] = {}
#: READMEs whose blocks take more than a few seconds (cil-train's runs a real two-phase training, ~40 s on 2 cores)
SLOW = {"cil-train"}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of every ```python block of a markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, textwrap.dedent(m.group(1))) for m in FENCE.finditer(text)]


def test_the_block_finder_sees_every_python_fence():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```text\nno\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (12, "y = x + 1\n")]


def test_every_package_has_a_readme():
    assert {p.parent.name for p in READMES} >= {"cil-losses", "cil-models", "cil-data", "cil-train"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """``tmp/repo`` as the working directory, with ``tmp/shared`` pointing at the real ``../shared``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    if SHARED.exists():
        (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    monkeypatch.chdir(repo)
    return repo


def _params():
    out = []
    for readme in READMES:
        name = readme.parent.name
        marks = [pytest.mark.xfail(reason=XFAIL[name], strict=False)] if name in XFAIL else []
        if name in SLOW:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(readme, id=name, marks=marks))
    return out


@pytest.mark.parametrize("readme", _params())
def test_readme_python_blocks_run(readme, workdir):
    blocks = python_blocks(readme.read_text())
    if not blocks:
        pytest.skip(f"{readme.relative_to(ROOT)} has no python block")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - every package README needs torch anyway
        pass
    try:
        for line, source in blocks:
            if "../shared/data" in source and not (SHARED / "data").exists():
                pytest.skip(f"{readme.relative_to(ROOT)}:{line} needs ../shared/data (developers and CI only)")
            code = compile(source, f"{readme.relative_to(ROOT)}:{line}", "exec")
            try:
                exec(code, namespace)
            except Exception as err:
                raise AssertionError(f"the python block at {readme.relative_to(ROOT)}:{line} fails: "
                                     f"{type(err).__name__}: {err}") from err
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    assert os.getcwd() == str(workdir)
