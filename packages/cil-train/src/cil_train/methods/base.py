"""What a method is: one class that owns its options, network, training stages, loss and evaluation.

The loop (:mod:`cil_train.loop`) calls a method's hooks in this order::

    build_network(in_channels)                  once, before phase 0 (the loop seeds the global generator)
    per phase t:
        make_teacher(model)                     t > 0: the frozen network of phase t−1
        held_out_per_class(phase)               samples per class kept out of training (balanced validation split)
        grow_network(ctx)                       add the phase's classes (head rows, extractors, imprinting)
        start_phase(ctx)                        the phase data, network and teacher are ready
        stages(ctx)                             the phase's training stages, each with its budget, sampler,
                                                learning rate and schedule, trainable parameters and loss
          per step: stage.loss(ctx, batch)      (default: loss) → backward → optimiser step → after_step(ctx)
        end_phase(ctx)                          e.g. weight aligning; returns figures to record
        (memory update, evaluation of ctx.evaluation kinds, checkpoint)
    state_dict() / load_state_dict()            whatever the method must carry across a resume

Options: a method's ``Options`` is an attrs class of :func:`~cil_train.options.option` fields; the command
line (``--field-name``), ``--help``, presets and ``config.json`` (under ``"method_options"``) derive from it.
Two methods that share an option (same field name) share its command-line flag; give it the same default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..options import number, option, option_name, reject_ignored_options

if TYPE_CHECKING:  # pragma: no cover
    import cil_data
    from cil_models import IncrementalNet

    from ..config import RunConfig
    from ..context import PhaseContext
    from ..stages import Stage

__all__ = ["Batch", "KDOptions", "Method", "NoOptions"]

MEMORY_KINDS = ("required", "optional", "none")
EVALUATIONS = ("cnn", "nme")


@attrs.frozen(kw_only=True)
class NoOptions:
    """A method without options of its own."""


@attrs.frozen(kw_only=True)
class KDOptions:
    """Options of every method that distils from the previous phase's network."""

    kd_temperature: float = option("distillation temperature T", number(0.0, lo_open=True), 2.0)


@dataclass
class Batch:
    """One training step's data: augmented float images, incremental labels, which samples are replayed."""

    x: torch.Tensor
    y: torch.Tensor
    is_memory: torch.Tensor


class Method:
    """Base method: plain cross-entropy on the phase data (new classes + memory), one main stage per phase.

    Class attributes a subclass sets:
        name: the ``--method`` value.
        summary: one line for ``--help`` (paper and losses).
        memory: "required" (refuses to run without exemplars), "optional" or "none" (exemplar-free:
            memory options must not be given).
        position: where the method stands in lists (``--help``, errors): baselines first.
        evaluation: what the method reports: ``("cnn",)``, ``("nme",)`` or ``("cnn", "nme")``.
        Options: its attrs options class.
        plain_base: phase 0 is plain cross-entropy training of the default network (linear head) with the
            shared main stage and uniform batches, so a base model trained by any such method can be reused
            with ``--base-checkpoint`` (``tests/test_base_checkpoint.py`` checks each method that says so).
            Not inherited: each subclass that keeps a plain phase 0 sets it again.
        incremental_only: the fields of ``Options`` that phase 0 never reads (they act from phase 1 on, e.g.
            a distillation weight). The base model's fingerprint (``--base-checkpoint``, ``--base-cache``)
            leaves them out, so the variants of a method that differ only in them share one base model
            (``tests/test_base_checkpoint.py`` trains phase 0 with each of them changed and compares).
        eager_only: why the method cannot run compiled extractors (``--compile``), or "" when it can.
        no_fp16: why the method cannot train under float16 autocast with loss scaling (``--amp fp16``; ``auto``
            on GPUs without bf16 then trains it in float32), or "" when it can.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    memory: ClassVar[str] = "optional"
    position: ClassVar[int] = 1000
    evaluation: ClassVar[tuple[str, ...]] = ("cnn",)
    Options: ClassVar[type] = NoOptions
    plain_base: ClassVar[bool] = False
    incremental_only: ClassVar[tuple[str, ...]] = ()
    eager_only: ClassVar[str] = ""
    no_fp16: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # not inherited: a subclass changes the method (e.g. bsce's phase 0 is not il-baseline's), so it says again
        cls.plain_base = bool(cls.__dict__.get("plain_base", False))
        own = {f.name for f in attrs.fields(cls.Options)} if attrs.has(cls.Options) else set()
        unknown = sorted(set(cls.incremental_only) - own)
        if unknown:
            raise TypeError(f"{cls.__name__}.incremental_only names {unknown}, not fields of its Options")

    def __init__(self, run: "RunConfig") -> None:
        self.run = run
        self.options = run.method_options

    # -- options -----------------------------------------------------------------------------
    @classmethod
    def options_from_dict(cls, values: dict[str, Any]) -> Any:
        """``Options(**values)`` with an error that names an option this method does not have."""
        own = {f.name for f in attrs.fields(cls.Options)}
        unknown = sorted(set(values) - own)
        if unknown:
            raise ConfigError(
                f"{', '.join(option_name(u) for u in unknown)} is not an option of --method {cls.name}"
                + (f" (its options: {', '.join(option_name(o) for o in sorted(own))})" if own else
                   " (it has no options of its own)") + "."
            )
        return cls.Options(**values)

    @classmethod
    def ignored_options(cls, options: Any) -> dict[str, str]:
        """``{field: why it has no effect}`` for this method's options that ``options`` (the other values as
        given) leaves unread, e.g. ``wa_p`` with ``--no-wa-align``. :meth:`check_options` makes setting one of
        them away from its default a ``ConfigError``, so that a probe row cannot silently repeat the default."""
        return {}

    @classmethod
    def check_options(cls, run: "RunConfig") -> None:
        """Rules between this method's options and the shared ones (raise ConfigError); by default, an option
        of :meth:`ignored_options` set away from its default is an error."""
        reject_ignored_options(cls.name, run.method_options, cls.ignored_options(run.method_options))

    # -- network -------------------------------------------------------------------------------
    def build_network(self, in_channels: int) -> "IncrementalNet":
        """The network before phase 0 (no classes yet): the run's backbone and a linear head."""
        from cil_models import IncrementalNet

        return IncrementalNet(self.run.backbone, in_channels=in_channels)

    def make_teacher(self, model: "IncrementalNet") -> "IncrementalNet":
        """The teacher of phases t > 0: a frozen copy of the network after phase t−1."""
        return model.frozen_copy()

    def grow_network(self, ctx: "PhaseContext") -> "IncrementalNet":
        """Phase t's network from phase t−1's (``ctx.model``): by default the head gains the new classes."""
        ctx.model.expand(ctx.num_new)
        return ctx.model

    # -- data ------------------------------------------------------------------------------------
    def held_out_per_class(self, phase: "cil_data.Phase") -> int:
        """Samples per seen class of ``phase`` held out of training as a class-balanced validation set (0: none)."""
        return 0

    # -- training --------------------------------------------------------------------------------
    def start_phase(self, ctx: "PhaseContext") -> None:
        """Called once the network has grown and the phase data is on the device."""

    def phase_lr(self, t: int) -> float:
        """Initial learning rate of phase ``t``'s main stage (the base phase may have its own, --base-lr)."""
        return self.run.base_lr if (t == 0 and self.run.base_lr is not None) else self.run.lr

    def stages(self, ctx: "PhaseContext") -> list["Stage"]:
        """The phase's training stages, run in order; by default the main stage alone."""
        return [self.main_stage(ctx)]

    def main_stage(self, ctx: "PhaseContext", **changes: Any) -> "Stage":
        """The main stage from the shared options (epochs, --base-epochs, lr, schedule, batch size)."""
        from ..stages import Stage

        changes.setdefault("lr", self.phase_lr(ctx.t))
        return Stage.from_run(self.run, t=ctx.t, **changes)

    def loss(self, ctx: "PhaseContext", batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """The main stage's loss of one batch (a scalar with a graph) and figures to log."""
        logits = ctx.net(batch.x)
        return F.cross_entropy(logits.float(), batch.y), {}

    def after_step(self, ctx: "PhaseContext") -> None:
        """Called after every optimiser step (e.g. WA's clipping)."""

    def end_phase(self, ctx: "PhaseContext") -> dict[str, float]:
        """Called after the last stage, before the memory update; returns figures to record."""
        return {}

    # -- state for exact resume ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
