"""Errors raised by cil-losses: each message names the argument, the value given and what is allowed."""

from __future__ import annotations

__all__ = ["LossArgumentError", "LossTypeError", "PhaseStateError"]


class LossArgumentError(ValueError):
    """A wrong value for a loss argument: bad shape, out-of-range number, inconsistent sizes."""


class LossTypeError(TypeError):
    """A loss argument of the wrong type or dtype (e.g. integer logits, float targets)."""


class PhaseStateError(LossArgumentError):
    """A stateful loss used before its phase context was set (e.g. ``GradientReweighter.start_phase``)."""
