"""Cross-package integration tests (each package also has its own tests under packages/*/tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (developers' and CI checkouts only); tests that need it skip elsewhere."""
    if not (SHARED / "glyphs100.npz").is_file():
        pytest.skip("../shared/data/glyphs100.npz is not here (users' clones have no ../shared)")
    return SHARED
