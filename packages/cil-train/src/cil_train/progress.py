"""Progress output for long work: a bar on a terminal, one line per epoch in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "resolve_progress_mode"]


def resolve_progress_mode(mode: str, stream: TextIO | None = None) -> str:
    stream = stream or sys.stderr
    if mode == "auto":
        return "bar" if getattr(stream, "isatty", lambda: False)() else "line"
    return mode


class Progress:
    """Progress of one epoch: ``update(n, **figures)`` after each step, ``close(**figures)`` at the end.

    ``bar`` redraws one line (at most 10 times a second); ``line`` prints a single summary line when
    the epoch ends; ``none`` prints nothing.
    """

    def __init__(self, total: int, desc: str, mode: str = "auto", stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.mode = resolve_progress_mode(mode, self.stream)
        self.total = max(int(total), 1)
        self.desc = desc
        self.width = width
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def _figures(self, figures: dict[str, float]) -> str:
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())

    def due(self) -> bool:
        """Whether the next ``update`` would redraw (so callers compute figures only then)."""
        return self.mode == "bar" and (time.perf_counter() - self._last_draw >= 0.1 or self.done + 1 >= self.total)

    def update(self, n: int = 1, **figures: float) -> None:
        self.done += n
        if self.mode != "bar":
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and self.done < self.total:
            return
        self._last_draw = now
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "█" * filled + "·" * (self.width - filled)
        self.stream.write(f"\r{self.desc} {bar} {self.done}/{self.total} [{elapsed:.0f}s<{eta:.0f}s] {self._figures(figures)}\033[K")
        self.stream.flush()

    def close(self, **figures: float) -> None:
        elapsed = time.perf_counter() - self.start
        if self.mode == "bar":
            self.stream.write(f"\r{self.desc} {'█' * self.width} {self.done}/{self.total} [{elapsed:.1f}s] {self._figures(figures)}\033[K\n")
        elif self.mode == "line":
            self.stream.write(f"{self.desc} {self.done}/{self.total} steps [{elapsed:.1f}s] {self._figures(figures)}\n")
        self.stream.flush()
