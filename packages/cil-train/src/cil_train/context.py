"""What a recipe sees of the current phase."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PhaseContext"]


@dataclass
class PhaseContext:
    """State of the phase being trained, shared by the loop and the recipe.

    Attributes:
        t: phase index (0 = base phase).
        net: the network being trained (``cil_models.IncrementalNet``, possibly compiled for forward).
        model: the same network, never compiled (heads, parameters, weight aligning).
        teacher: frozen copy of the network after the previous phase (None in phase 0).
        num_old / num_new / num_seen: class counts; classes ``< num_old`` are old.
        boundaries: task boundaries of the seen classes, ``[0, |S_0|, |S_0|+|S_1|, ...]``.
        class_counts: ``n_c``, training samples of each seen class available in this phase (float, device).
        original_counts: ``N_c``, original (long-tailed, pre-memory) training count of each seen class.
        memory_counts: ``m_c``, exemplars held for each old class.
        n_seen / n_new: original training images of all old classes / training images of the new classes.
        dataset_mean_count: mean original training count per class over the whole data set.
    """

    cfg: Any
    t: int
    net: torch.nn.Module
    model: Any
    teacher: Any
    device: torch.device
    num_old: int
    num_new: int
    boundaries: list[int]
    class_counts: torch.Tensor
    original_counts: torch.Tensor
    memory_counts: torch.Tensor
    n_seen: int
    n_new: int
    dataset_mean_count: float
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seen(self) -> int:
        return self.num_old + self.num_new

    @property
    def old_boundaries(self) -> list[int]:
        """Boundaries of the old tasks only (``[0, ..., num_old]``)."""
        return self.boundaries[: self.t + 1]

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the previous phase's frozen network (eval mode, no graph)."""
        if self.teacher is None:
            raise RuntimeError("phase 0 has no teacher")
        with torch.no_grad():
            return self.teacher(x)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else float(self.cfg.lr)
