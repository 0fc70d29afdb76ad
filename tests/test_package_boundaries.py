"""The four packages keep the narrow interfaces of DESIGN.md: declared dependencies and actual imports."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {  # distribution → (declared requirement names, importable top-level modules)
    "cil-losses": ({"torch"}, {"torch"}),
    "cil-models": ({"torch", "torchvision"}, {"torch", "torchvision"}),
    "cil-data": ({"numpy", "h5py", "torch"}, {"numpy", "h5py", "torch", "PIL"}),  # PIL: optional, lazily imported
    "cil-train": ({"cil-losses", "cil-models", "cil-data", "attrs"},
                  {"cil_losses", "cil_models", "cil_data", "attrs", "torch", "numpy", "matplotlib"}),
}
STDLIB = set(sys.stdlib_module_names)


def _requirement_name(req: str) -> str:
    for sep in "<>=!~[ ;":
        req = req.split(sep)[0]
    return req.strip()


@pytest.mark.parametrize("dist", sorted(ALLOWED))
def test_declared_dependencies(dist):
    meta = tomllib.loads((ROOT / "packages" / dist / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in meta["dependencies"]}
    assert declared == ALLOWED[dist][0]
    for req in meta["dependencies"]:
        assert any(op in req for op in (">=", "~=", "<")), f"{dist}: {req} should declare a range, not a pin"
        assert "==" not in req


@pytest.mark.parametrize("dist", sorted(ALLOWED))
def test_sources_import_only_allowed_modules(dist):
    own = dist.replace("-", "_")
    allowed = ALLOWED[dist][1] | STDLIB | {own}
    bad = []
    for path in (ROOT / "packages" / dist / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] not in allowed]
    assert not bad, "imports outside the package's declared dependencies:\n" + "\n".join(bad)


@pytest.mark.parametrize("dist", sorted(ALLOWED))
def test_each_package_has_its_own_version_readme_and_tests(dist):
    folder = ROOT / "packages" / dist
    init = (folder / "src" / dist.replace("-", "_") / "__init__.py").read_text()
    assert '__version__ = "' in init
    assert len((folder / "README.md").read_text()) > 500
    assert list((folder / "tests").glob("test_*.py"))
