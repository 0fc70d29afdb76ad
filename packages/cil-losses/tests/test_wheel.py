"""Release hygiene: the wheel's metadata (the checks ``twine check`` makes, and ours), and the wheel installed
into an environment that holds nothing but torch runs the first example of its own README.

The environment is a fresh ``venv`` without pip; torch comes from a folder of symbolic links to this
interpreter's torch and the distributions it requires (a ``.pth`` file puts it on the path), so torch is not
downloaded or copied. The wheel is built with ``hatch build`` (skipped when hatch is not on the PATH).
"""

from __future__ import annotations

import email.parser
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import cil_losses as L

PACKAGE = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    hatch = shutil.which("hatch")
    if hatch is None:
        pytest.skip("hatch is not on the PATH (needed to build the wheel)")
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HATCH_ENV", "VIRTUAL_ENV"))}
    done = subprocess.run([hatch, "build", "-t", "wheel", str(out)], cwd=PACKAGE, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("cil_losses-*.whl")
    return path


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode("utf-8"))
    return meta, names, dist_info


@pytest.mark.slow
def test_wheel_metadata_passes_the_release_checks(wheel):
    meta, names, dist_info = _metadata(wheel)
    # what `twine check` verifies: a metadata version it knows, name and version, a long description that
    # renders: markdown declared, non-empty
    assert meta["Metadata-Version"] in {"2.1", "2.2", "2.3", "2.4", "2.5"}
    assert meta["Name"] == "cil-losses" and meta["Version"] == L.__version__ == "1.0.0"
    assert meta["Description-Content-Type"] == "text/markdown"
    body = meta.get_payload()
    assert body.strip() == (PACKAGE / "README.md").read_text().strip()
    # ours: summary, licence (SPDX expression and file, no deprecated licence classifier), classifiers,
    # python range, the one dependency
    assert meta["Summary"] and meta["Author"]
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert f"{dist_info}/licenses/LICENSE" in names
    classifiers = meta.get_all("Classifier")
    assert "Development Status :: 5 - Production/Stable" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert meta["Requires-Python"] == ">=3.10"
    assert meta.get_all("Requires-Dist") == ["torch>=2.3"]
    assert sorted({n.split("/")[0] for n in names}) == sorted({"cil_losses", dist_info})


def _torch_view(folder: Path) -> Path:
    """Symbolic links to torch and every installed distribution it requires (markers not evaluated: what is
    not installed here is not needed here)."""
    folder.mkdir()
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d for d in md.distributions() if d.metadata["Name"]}
    todo, seen = ["torch"], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        dist = installed[name]
        for req in dist.requires or []:
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
            if match:
                todo.append(re.sub(r"[-_.]+", "-", match.group(1)).lower())
        root = Path(dist.locate_file(""))
        for entry in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            link = folder / entry
            if not link.exists() and (root / entry).exists():
                link.symlink_to(root / entry)
    assert "torch" in seen
    return folder


@pytest.mark.slow
def test_wheel_installs_with_torch_alone_and_runs_its_readme(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    view = _torch_view(tmp_path / "torch-view")
    (Path(site) / "torch_view.pth").write_text(str(view) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    # pip of this interpreter installs into the venv; torch>=2.3 must be found installed there (no index)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                           "--no-cache-dir", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    meta, _, _ = _metadata(wheel)
    snippet = FENCE.search(meta.get_payload()).group(1)
    probe = snippet + (
        "\nimport importlib.metadata, cil_losses, sys\n"
        "print('cil_losses from', cil_losses.__file__)\n"
        "names = sorted(d.metadata['Name'] for d in importlib.metadata.distributions())\n"
        "assert not [n for n in names if n.startswith('cil') and n != 'cil-losses'], names\n"
    )
    run = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"cil_losses from {Path(site)}" in run.stdout.replace(os.sep + "__init__.py", "")
    assert "loss after 5 steps" in run.stdout
    assert sysconfig.get_paths()["purelib"] != site
