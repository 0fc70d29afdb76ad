"""Training stages and the samplers that feed them.

A phase is a list of :class:`Stage` objects run in order (a method's ``stages(ctx)`` hook): the main
stage, and where a method has them class-balanced finetuning, bias correction on a held-out split,
compression, ... Each stage has its own budget (epochs), batch size, sampler, learning rate and
schedule, trainable parameters and loss. A sampler yields, per epoch, the positions (into the phase
data) of each batch.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch

import cil_data

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .context import PhaseContext

__all__ = ["ClassBalancedBatches", "ClassOversampling", "MemoryOversampling", "RatioPreservingBatches", "Sampler",
           "ShuffleBatches", "Stage", "make_optimizer"]

SCHEDULES = ("cosine", "step", "constant")


class Sampler(Protocol):
    """Batches of one epoch as positions into the phase data; ``len()`` = steps per epoch."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None: ...


class ShuffleBatches:
    """Uniform batches over ``positions``: a fresh permutation each epoch, the last batch may be smaller
    (``drop_last``: dropped, unless there are fewer positions than one batch: then that one batch is kept)."""

    def __init__(self, positions: torch.Tensor, batch_size: int, generator: torch.Generator, *,
                 drop_last: bool = False) -> None:
        self.positions, self.batch_size, self.generator = positions, batch_size, generator
        self.drop_last = drop_last and len(positions) >= batch_size

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.positions) // self.batch_size
        return math.ceil(len(self.positions) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.positions[torch.randperm(len(self.positions), generator=self.generator)]
        yield from order.split(self.batch_size)[: len(self)]

    def state_dict(self) -> None:  # its only state is the phase generator, checkpointed by the loop
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class RatioPreservingBatches:
    """SS-IL's batches: ``batch_new`` new samples + ``batch_memory`` cycled exemplars per step
    (:class:`cil_data.RatioPreservingSampler`); an epoch is one pass over the new data."""

    def __init__(self, ctx: "PhaseContext", batch_new: int, batch_memory: int, *, drop_last: bool = False) -> None:
        data = ctx.data
        is_mem = data.is_memory.cpu()[data.train]
        self.new_pos, self.mem_pos = data.train[~is_mem], data.train[is_mem]
        if len(self.mem_pos) == 0:
            raise ConfigError(f"--method {ctx.run.method} needs memory samples in phase {ctx.t + 1}, but the memory "
                              "is empty.")
        # drop_last (SS-IL's trainer) only where it leaves a step: a long-tailed phase may have < batch_new images
        self.sampler = cil_data.RatioPreservingSampler(len(self.new_pos), len(self.mem_pos), batch_new=batch_new,
                                                       batch_memory=batch_memory, generator=ctx.generator,
                                                       drop_last=drop_last and len(self.new_pos) >= batch_new)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for new_idx, mem_idx in self.sampler:
            yield torch.cat([self.new_pos[new_idx], self.mem_pos[mem_idx]])

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.sampler.load_state_dict(state)


class ClassBalancedBatches:
    """Class-balanced batches (balanced finetuning, bias correction): as many draws per epoch as there are
    ``positions`` (default: the training positions of the phase), with replacement, every class present
    equally likely (:func:`cil_data.class_balanced_indices`)."""

    def __init__(self, ctx: "PhaseContext", batch_size: int, positions: torch.Tensor | None = None) -> None:
        self.positions = ctx.data.train if positions is None else positions
        self.labels = ctx.data.y[self.positions.to(ctx.data.y.device)].cpu()
        self.batch_size, self.generator = batch_size, ctx.generator

    def __len__(self) -> int:
        return math.ceil(len(self.positions) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        pick = cil_data.class_balanced_indices(self.labels, len(self.positions), self.generator)
        yield from self.positions[pick].split(self.batch_size)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class MemoryOversampling:
    """Batches in which new and replayed samples are equally likely (the BalancedS-CE paper's "memory
    oversampling", Table 6; HOU's ``--rs_ratio`` sampler): ``⌈N_new / (1 − r)⌉`` draws per epoch with
    replacement, weight 1 on a new sample and ``N_new·r / (N_mem·(1 − r))`` on a replayed one (``r = 1/2``)."""

    def __init__(self, ctx: "PhaseContext", batch_size: int, ratio: float = 0.5) -> None:
        data = ctx.data
        self.positions = data.train
        is_mem = data.is_memory.cpu()[self.positions]
        n_mem, n_new = int(is_mem.sum()), int((~is_mem).sum())
        weight_mem = n_new * ratio / (n_mem * (1.0 - ratio)) if n_mem else 0.0
        self.weights = torch.where(is_mem, weight_mem, 1.0).double()
        self.draws = math.ceil(n_new / (1.0 - ratio)) if n_mem else n_new
        self.batch_size, self.generator = batch_size, ctx.generator

    def __len__(self) -> int:
        return math.ceil(self.draws / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        pick = torch.multinomial(self.weights, self.draws, replacement=True, generator=self.generator)
        yield from self.positions[pick].split(self.batch_size)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class ClassOversampling(ShuffleBatches):
    """Every replayed sample repeated ``round(mean new-class count / mean exemplars per old class)`` times
    (25 for 500 vs 20), then uniform batches: every class about equally likely (the BalancedS-CE paper's
    "class oversampling", Table 6)."""

    def __init__(self, ctx: "PhaseContext", batch_size: int) -> None:
        data = ctx.data
        positions = data.train
        is_mem = data.is_memory.cpu()[positions]
        labels = data.y.cpu()[positions]
        new_counts = torch.bincount(labels[~is_mem])
        mem_counts = torch.bincount(labels[is_mem]) if bool(is_mem.any()) else torch.zeros(0, dtype=torch.int64)
        new_mean = new_counts[new_counts > 0].double().mean() if bool((new_counts > 0).any()) else torch.tensor(1.0)
        mem_mean = mem_counts[mem_counts > 0].double().mean() if bool((mem_counts > 0).any()) else None
        self.repeat = max(1, int(torch.round(new_mean / mem_mean))) if mem_mean is not None else 1
        repeated = torch.cat([positions[~is_mem], positions[is_mem].repeat(self.repeat)])
        super().__init__(repeated, batch_size, ctx.generator)


@dataclass(frozen=True)
class Stage:
    """One training stage of a phase.

    Attributes:
        name: shown in the progress output and recorded with the figures ("main" for the main stage).
        epochs: passes of the sampler.
        lr: initial learning rate (SGD); ``schedule`` ``cosine``, ``step`` (``lr_steps``, ``lr_decay``) or
            ``constant`` over the stage's epochs.
        batch_size: the default sampler's batch size.
        sampler: ``sampler(ctx) -> Sampler``; None: uniform batches over the training positions.
        parameters: ``parameters(model) -> iterable of parameters`` to train; None: all that require grad. The
            network's other parameters stop requiring gradients during the stage (:func:`frozen_outside`).
        loss: ``loss(ctx, batch) -> (loss, figures)``; None: the method's ``loss``.
        augment: augment the batches with the data source's policy (False: normalisation only, as BiC's
            bias-correction stage).
        after_memory: run after the phase's memory update, on the updated memory alone (every seen class
            with its exemplars: LUCIR's and PODNet's class-balanced finetuning). Such stages come last.
        train_mode: run the network in training mode (batch norms normalise with the batch's statistics and
            update their running ones). False: evaluation mode, so that nothing but the stage's parameters
            changes (BiC's bias correction, which must leave the running statistics of stage 1 alone).
    """

    name: str
    epochs: int
    lr: float
    batch_size: int
    schedule: str = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sampler: Callable[["PhaseContext"], Sampler] | None = None
    parameters: Callable[[torch.nn.Module], Any] | None = None
    loss: Callable[..., Any] | None = None
    augment: bool = True
    after_memory: bool = False
    train_mode: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.schedule not in SCHEDULES:
            raise ConfigError(f"stage {self.name!r}: epochs ≥ 0, batch size ≥ 1, lr > 0 and a schedule of "
                              f"{', '.join(SCHEDULES)} are needed, got {self.epochs}, {self.batch_size}, {self.lr}, "
                              f"{self.schedule!r}")

    @classmethod
    def from_run(cls, run: "RunConfig", *, t: int, **changes: Any) -> "Stage":
        """The main stage of phase ``t`` from the shared options; the base phase takes ``--base-epochs``
        (the ``--lr-steps`` scaled to it)."""
        epochs = run.base_epochs if (t == 0 and run.base_epochs) else run.epochs
        steps = tuple(run.lr_steps or ())
        if epochs != run.epochs and steps:
            steps = scale_lr_steps(steps, run.epochs, epochs)
        stage = cls(name="main", epochs=epochs, lr=run.lr, batch_size=run.batch_size, schedule=run.lr_schedule,
                    lr_steps=steps, lr_decay=run.lr_decay, momentum=run.momentum, weight_decay=run.weight_decay)
        return replace(stage, **changes) if changes else stage

    def make_sampler(self, ctx: "PhaseContext") -> Sampler:
        if self.sampler is not None:
            return self.sampler(ctx)
        return ShuffleBatches(ctx.data.train, self.batch_size, ctx.generator)

    def trainable(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        params = model.parameters() if self.parameters is None else self.parameters(model)
        return [p for p in params if p.requires_grad]

    def lr_factor(self, epoch: int) -> float:
        """The schedule's factor of the initial rate at ``epoch``."""
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            return self.lr_decay ** sum(epoch >= s for s in sorted(self.lr_steps))
        return 1.0


@contextlib.contextmanager
def frozen_outside(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Within the block, the parameters of ``model`` that a stage does not train stop requiring gradients;
    they require them again afterwards.

    A stage that trains a part of the network (BiC's bias correction, LUCIR's and PODNet's classifier
    finetuning, DER's balanced classifier) would otherwise back-propagate through the whole backbone for
    gradients no optimiser reads. The trained parameters' gradients and the batch norms' statistics are the
    same either way; only the unused backward is skipped.
    """
    chosen = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def make_optimizer(stage: Stage, params: list[torch.nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with the stage's rate, momentum and weight decay, and its per-epoch schedule."""
    opt = torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, stage.lr_factor)


def scale_lr_steps(steps: tuple[int, ...] | list[int], epochs: int, new_epochs: int) -> tuple[int, ...]:
    """A step schedule stretched to another number of epochs (same fractions of the run):
    ``--preset cifar100-lt-lfs10 --epochs 16`` divides the rate at epochs 8 and 12 instead of 80 and 120."""
    out: list[int] = []
    for s in steps:
        e = max(1, round(s * new_epochs / epochs))
        if out and e <= out[-1]:
            e = out[-1] + 1
        if e < new_epochs:
            out.append(e)
    return tuple(out)
