"""Errors of cil-train. A :class:`ConfigError` ends the CLI with exit code 2 and its message."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the option, the value and what is allowed."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: cut short, damaged, foreign, or holding pickled objects."""


class RunWriteError(RuntimeError):
    """A file of the run folder could not be written (disk full, permissions); the previous file is intact."""


class RunLockedError(ConfigError):
    """Another process is training into (or resuming) the same run folder."""
