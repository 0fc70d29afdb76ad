"""Atomic file replacement: write a new file beside the target, fsync it, ``os.replace`` it over the
target, then fsync the folder, so that a crash at any moment leaves either the old or the new file."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .errors import DataError

__all__ = ["atomic_replace", "atomic_write_bytes", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """``<name>.tmp-<pid>-<random>`` in the target's folder (same file system, so the rename is atomic)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_path(path: Path, directory: bool = False) -> None:
    if directory and os.name == "nt":  # folders cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to create a complete new file, then atomically put it at ``path``.

    Missing parent folders are created. The temporary file is removed if ``write`` fails; the target is
    untouched until the rename.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot write {path}: the folder {folder} cannot be created ({exc})") from exc
        _fsync_path(folder.parent if str(folder.parent) else Path("."), directory=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_path(folder, directory=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_replace`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_replace(path, write)
