"""What a method sees of the current phase: :class:`PhaseData` and :class:`PhaseContext`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["PhaseContext", "PhaseData"]


@dataclass
class PhaseData:
    """The phase's training data on the device: uint8 images, incremental labels, replay flags.

    ``train`` and ``val`` are positions (CPU int64) into ``x``/``y``: the samples trained on and those held out
    as a class-balanced validation split (empty unless the method asks for one). ``new_x``/``new_y`` are the
    new classes' images and labels on the CPU (the memory update's input)."""

    x: torch.Tensor
    y: torch.Tensor
    is_memory: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    new_x: torch.Tensor = field(repr=False)
    new_y: torch.Tensor = field(repr=False)

    @property
    def num_new_images(self) -> int:
        return int((~self.is_memory).sum())

    @property
    def num_exemplars(self) -> int:
        return int(self.is_memory.sum())


@dataclass
class PhaseContext:
    """State of the phase being trained, shared by the loop and the method.

    Attributes:
        run: the :class:`~cil_train.config.RunConfig`; ``options``: the method's own options.
        t: phase index (0 = base phase).
        model: the network being trained (``cil_models.IncrementalNet``); ``net``: the same, possibly compiled
            for the forward pass.
        teacher: frozen network after the previous phase (None in phase 0); :meth:`frozen_teacher` is the
            network to run its forward passes on (``--fold-bn``: a copy with folded batch norms).
        num_old / num_new / num_seen: class counts; classes ``< num_old`` are old.
        boundaries: task boundaries of the seen classes, ``[0, |S_0|, |S_0|+|S_1|, ...]``.
        data: the phase's :class:`PhaseData`.
        class_counts: ``n_c``, training samples of each seen class available in this phase (float, device).
        original_counts: ``N_c``, original (long-tailed, pre-memory) training count of each seen class.
        memory_counts: ``m_c``, exemplars held for each old class.
        n_seen / n_new: original training images of all old classes / training images of the new classes.
        dataset_mean_count: mean original training count per class over the whole data set.
        generator: the phase's CPU generator (batch order, method draws); checkpointed with the run.
        normalize: uint8 images → the network's input (no augmentation).
        extract: ``extract(model, images, "features" | "logits")`` in eval mode, in batches.
        optimizer: the current stage's optimiser; step / epoch: counters (step runs over the whole phase).
    """

    run: Any
    t: int
    model: Any
    teacher: Any
    device: torch.device
    num_old: int
    num_new: int
    boundaries: list[int]
    data: PhaseData
    class_counts: torch.Tensor
    original_counts: torch.Tensor
    memory_counts: torch.Tensor
    n_seen: int
    n_new: int
    dataset_mean_count: float
    generator: torch.Generator
    normalize: Callable[[torch.Tensor], torch.Tensor]
    extract: Callable[..., torch.Tensor]
    net: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    stage: Any = None
    step: int = 0
    epoch: int = 0
    fold_teacher: bool = False
    _folded: tuple[Any, Any] | None = field(default=None, repr=False)  # (teacher, its folded copy)

    @property
    def options(self) -> Any:
        return self.run.method_options

    @property
    def num_seen(self) -> int:
        return self.num_old + self.num_new

    @property
    def old_boundaries(self) -> list[int]:
        """Boundaries of the old tasks only (``[0, ..., num_old]``)."""
        return self.boundaries[: self.t + 1]

    def frozen_teacher(self) -> Any:
        """The teacher for forward passes without a graph: with ``fold_teacher`` a copy of :attr:`teacher` whose
        batch norms are folded into their convolutions (:func:`cil_models.fold_batch_norms`, made once per
        teacher), else :attr:`teacher` itself. Gradients never flow through it."""
        if self.teacher is None:
            raise RuntimeError("phase 0 has no teacher")
        if not self.fold_teacher:
            return self.teacher
        if self._folded is None or self._folded[0] is not self.teacher:
            from cil_models import fold_batch_norms

            self._folded = (self.teacher, fold_batch_norms(self.teacher))
        return self._folded[1]

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the previous phase's frozen network (eval mode, no graph)."""
        teacher = self.frozen_teacher()
        with torch.no_grad():
            return teacher(x)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else float(self.run.lr)
