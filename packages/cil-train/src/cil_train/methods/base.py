"""What a method is: a recipe of losses, a sampler and post-phase steps on the one shared loop.

A recipe never owns the training loop. The loop (``cil_train.loop``) calls, per phase:
``start_phase(ctx)`` → for every step ``loss(ctx, batch)`` (forward included), backward, optimiser
step, ``after_step(ctx)`` → ``end_phase(ctx)`` → memory update → evaluation. Adding a method means
writing one small subclass and registering it with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..context import PhaseContext

__all__ = ["Batch", "Recipe", "METHODS", "make_recipe", "method_names", "register"]

METHODS: dict[str, type["Recipe"]] = {}


def register(cls: type["Recipe"]) -> type["Recipe"]:
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(METHODS)


def make_recipe(cfg: "RunConfig") -> "Recipe":
    return METHODS[cfg.method](cfg)


@dataclass
class Batch:
    """One training step's data: augmented float images, incremental labels, which samples are replayed."""

    x: torch.Tensor
    y: torch.Tensor
    is_memory: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class Recipe:
    """Base recipe: plain cross-entropy on the phase data (new classes + memory).

    Class attributes a subclass sets:
        name: the ``--method`` value.
        summary: one line for ``--help`` (paper and losses).
        memory: "required" (refuses to run without exemplars), "optional" or "none" (exemplar-free:
            the memory options are ignored and must not be given).
        sampler: "shuffle" (uniform batches over new data + memory) or "ratio_preserving" (SS-IL).
        uses_nme: evaluate the nearest-mean-of-exemplars classifier too.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    memory: ClassVar[str] = "optional"
    sampler: ClassVar[str] = "shuffle"
    uses_nme: ClassVar[bool] = False

    def __init__(self, cfg: "RunConfig") -> None:
        self.cfg = cfg

    # -- hooks -----------------------------------------------------------------------------
    def phase_lr(self, t: int) -> float:
        """Initial learning rate of phase ``t``."""
        return self.cfg.lr

    def start_phase(self, ctx: "PhaseContext") -> None:
        """Called once the network is expanded and the phase data is on the device."""

    def validation_per_class(self, ctx: "PhaseContext") -> int:
        """Samples per seen class held out of training as a balanced validation set (0: none)."""
        return 0

    def loss(self, ctx: "PhaseContext", batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch (a scalar with a graph) and figures to log."""
        logits = ctx.net(batch.x)
        return F.cross_entropy(logits.float(), batch.y), {}

    def after_step(self, ctx: "PhaseContext") -> None:
        """Called after every optimiser step (e.g. WA's clipping)."""

    def end_phase(self, ctx: "PhaseContext") -> dict[str, float]:
        """Called after the last epoch, before the memory update; returns figures to record."""
        return {}

    # -- state for exact resume ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- helpers shared by recipes ------------------------------------------------------------
    @staticmethod
    def old_logits(ctx: "PhaseContext", logits: torch.Tensor) -> torch.Tensor:
        return logits[:, : ctx.num_old]
