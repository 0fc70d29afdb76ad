"""Errors raised by cil-data: every message says what is wrong and how to fix it."""

from __future__ import annotations

__all__ = ["DataError", "MemoryFileError", "MissingDependencyError"]


class DataError(ValueError):
    """Bad or missing data: wrong shape/dtype, labels out of range, empty classes, missing files,
    invalid protocol arguments (ρ < 1, increments that do not sum to the number of classes, ...)."""


class MemoryFileError(DataError):
    """An exemplar-memory file that is corrupt, foreign or of another schema version."""


class MissingDependencyError(ImportError):
    """An optional third-party package (e.g. Pillow for image folders) is needed but not installed."""
