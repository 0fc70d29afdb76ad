"""Small argument checks shared by the modules of cil-models (internal)."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ModelConfigError


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` ≥ 1 (bools excluded), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ModelConfigError(f"{name} must be an int >= 1, got {value}")
    return value


def one_of(name: str, value: object, allowed: Iterable[object]) -> object:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``name`` and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ModelConfigError(f"{name} must be one of {choices}; got {value!r}")
    return value


def positive_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite real number > 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number > 0, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not (value > 0.0 and value != float("inf")):
        raise ModelConfigError(f"{name} must be a finite real number > 0, got {value}")
    return value
