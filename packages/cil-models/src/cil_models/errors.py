"""Errors raised by cil-models: each message names the argument, the value given and what is allowed."""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A wrong argument to a backbone, head or network: unknown name, bad size, bad option."""


class HeadStateError(ModelConfigError):
    """An operation that the head's current state does not allow (no classes yet, bad class split)."""


class CheckpointError(ModelConfigError):
    """A checkpoint state that is not one of ours, is incomplete, or does not fit the network."""
