"""Errors raised by cil-data: every message says what is wrong and how to fix it."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data: wrong shape/dtype, labels out of range, empty classes, missing files."""


class MemoryFileError(DataError):
    """An exemplar-memory file that is corrupt, foreign or of another schema version."""
