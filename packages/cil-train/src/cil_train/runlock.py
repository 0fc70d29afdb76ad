"""One writer per run folder: ``run.lock`` held with an OS file lock for the life of the process.

The lock is ``fcntl.flock`` on ``RUN/run.lock``: the kernel releases it when the process ends in any way
(also SIGKILL or a power cut), so a lock file left behind by a killed run never blocks ``--resume``; only a
process that is alive and still holds it does. The file records the holder's process id, host, start time
and command line, which the refusal names. Where ``fcntl`` is missing (Windows) the holder is recognised
by its process id on the same host instead.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .errors import RunLockedError

try:  # pragma: no cover - platform dependent
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLock"]

LOCK_FILE = "run.lock"


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (its details are not written yet)"
    text = f"process {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
    if info.get("command"):
        command = str(info["command"])
        text += f" ({command[:160] + '…' if len(command) > 160 else command})"
    return text


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` — refuse (:class:`RunLockedError`, exit 2) if another live process holds it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._refusal(_read(self.path)) from None
            else:  # pragma: no cover - Windows
                info = _read(self.path)
                if info.get("host") == socket.gethostname() and info.get("pid") not in (None, os.getpid()) \
                        and _alive(int(info["pid"])):
                    raise self._refusal(info)
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": _dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _refusal(self, info: dict[str, Any]) -> RunLockedError:
        return RunLockedError(
            f"the run folder {self.folder} is in use by {_describe(info)}: two processes must not write into one "
            f"run folder. Wait for it to finish (or stop it), then continue with --resume {self.folder}; or "
            "choose another --out.")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock; the file stays (it is harmless)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
