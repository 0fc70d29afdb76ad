"""cil-losses depends on torch only; every public name is exported and documented in the README."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

import cil_losses as L
import cil_losses.nn as LN

PACKAGE = Path(__file__).resolve().parents[1]
ALLOWED_TOP_LEVEL = {"torch", "cil_losses"} | set(sys.stdlib_module_names)
ALLOWED_IN_TESTS = ALLOWED_TOP_LEVEL | {"pytest"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("folder, allowed", [("src/cil_losses", ALLOWED_TOP_LEVEL), ("tests", ALLOWED_IN_TESTS)])
def test_imports_only_torch_and_the_standard_library(folder, allowed):
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files
    for path in files:
        extra = _imports(path) - allowed
        assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}; cil-losses may use torch only"


def test_declared_dependencies_are_torch_only():
    meta = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert [d.replace(" ", "") for d in meta["dependencies"]] == ["torch>=2.3"]
    assert not meta.get("optional-dependencies")


def test_version_matches_the_package_metadata_source():
    assert L.__version__ == "1.0.0"


def test_every_exported_name_exists():
    for name in L.__all__:
        assert hasattr(L, name), name
    for name in LN.__all__:
        assert hasattr(LN, name), name


def test_readme_documents_every_loss():
    readme = (PACKAGE / "README.md").read_text()
    public = [n for n in L.__all__ if not n.startswith("_") and n[0].islower() and n not in {"nn"}]
    missing = [n for n in public if f"`{n}" not in readme]
    assert not missing, f"README.md does not mention {missing}"
    for name in LN.__all__:
        assert name in readme, f"README.md does not mention cil_losses.nn.{name}"
    assert "pip install ./packages/cil-losses" in readme
