"""SS-IL: separated softmax with ratio-preserving batches and task-wise KD (Ahn et al. ICCV 2021; METHODS.md §2).

Each step concatenates ``B_n`` samples of the new data (``--ssil-batch-new``, default 128) and ``B_r``
cycled memory samples (``--ssil-batch-memory``, default 32). ``L = L_SS + L_TKD``: separated softmax CE
(new samples over the new classes, replayed samples over the old classes) plus task-wise KD
``Σ_{s<t} T²·KL(softmax(ẑ[S_s]/T) ‖ softmax(z[S_s]/T))`` on every sample, ``T = 2``. Phase 0 is plain
CE. The learning rate of phase ``t`` is ``lr / (t + 1)``.

Defaults follow the official trainer (hongjoon0805/SS-IL-Official: ``trainer/ssil.py``, ``main.py``,
``arguments.py``):

- the last, smaller new-data batch of an epoch is dropped (``drop_last``; kept when a phase has fewer
  new images than ``B_n``, where dropping would leave no step: a long-tailed phase can);
- phase 0 trains with batches of ``B_n`` (its last batch dropped too), unless ``--base-checkpoint``
  gives the protocol's shared base phase, which then runs as for every other plain-CE method;
- weight decay ``1e-4`` (``--ssil-weight-decay``), and within each phase a step schedule dividing the
  rate by 10 at 40 % and 80 % of the epochs (official: 100 base epochs ÷10 at 40/80; 25 incremental
  epochs ÷10 at 10/20), ``--ssil-schedule run`` uses the run's ``--lr-schedule`` instead;
- not matched: the official code keeps one SGD (and its momentum buffers) across phases; here each phase
  starts a fresh one, as every method. Its memory is a fixed total filled with the first images of each
  class (``--memory-total``, ``--memory-selection random`` is the nearest protocol).

The knowledge distillation term is ``--ssil-kd task`` (the ICCV paper's task-wise KD), ``global`` (one KD
over all old classes, the official ``vanilla.py --distill global``) or ``none`` (the earlier arXiv version,
``papers/ss-il.txt``: separated softmax and ratio-preserving batches only). With
``--no-ssil-separated`` (plain CE over all seen classes) and ``--no-ssil-ratio-preserving`` (uniform
batches of ``B_n + B_r`` over new data and memory together) these give the rows of the paper's ablation
(FT, FT w/ RP, FT w/ SS, SS-IL). The round-1 form (the committed tables before the faithful-protocols
review) is ``--no-ssil-drop-last --no-ssil-own-base --ssil-weight-decay 5e-4 --ssil-schedule run``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

import cil_losses as L

import attrs

from ..options import boolean, choice, number, option
from ..stages import RatioPreservingBatches, ShuffleBatches
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class SSILOptions(KDOptions):
    ssil_batch_new: int = option("new-data samples per batch (B_n)", number(1, integer=True), 128)
    ssil_batch_memory: int = option("memory samples per batch (B_r)", number(1, integer=True), 32)
    ssil_kd: str = option("distillation: task (task-wise KD, ICCV), global (one KD over all old classes), none "
                          "(the earlier arXiv version)", choice("task", "global", "none"), "task")
    ssil_separated: bool = option("separated softmax (false: plain CE over all seen classes)", boolean, True)
    ssil_ratio_preserving: bool = option("ratio-preserving batches (false: uniform batches of B_n + B_r over new "
                                         "data and memory)", boolean, True)
    ssil_drop_last: bool = option("drop the last, smaller new-data batch of an epoch (official)", boolean, True)
    ssil_own_base: bool = option("phase 0 with SS-IL's own batches of B_n, weight decay and schedule (official); false: "
                                 "the run's main stage as every plain-CE method", boolean, True)
    ssil_weight_decay: float = option("weight decay (official: 1e-4)", number(0.0), 1e-4)
    ssil_schedule: str = option("paper: ÷10 at 40 % and 80 % of each phase's epochs (official); run: --lr-schedule",
                                choice("paper", "run"), "paper")


@register
class SSIL(Method):
    name = "ssil"
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "separated softmax + ratio-preserving batches + task-wise KD, lr/(t+1) (Ahn et al. 2021)"
    memory = "required"
    position = 100
    Options = SSILOptions

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        return {"kd_temperature": "--ssil-kd none has no distillation"} if options.ssil_kd == "none" else {}

    def phase_lr(self, t: int) -> float:
        return super().phase_lr(t) / (t + 1)

    @classmethod
    def options_from_dict(cls, values: dict[str, Any]) -> Any:
        values = dict(values)
        if "ssil_tkd" in values:  # config.json of before the rename: tkd false computed the global KD
            values.setdefault("ssil_kd", "task" if values.pop("ssil_tkd") else "global")
        return super().options_from_dict(values)

    def stages(self, ctx):
        o = self.options
        shared_base = self.run.base_checkpoint or self.run.base_cache
        if ctx.t == 0 and (shared_base or not o.ssil_own_base):  # the protocol's shared base phase
            return [self.main_stage(ctx)]
        changes: dict[str, Any] = {"weight_decay": o.ssil_weight_decay}
        epochs = self.main_stage(ctx).epochs
        if o.ssil_schedule == "paper":
            changes.update(schedule="step", lr_decay=0.1,
                           lr_steps=tuple(sorted({max(1, round(f * epochs)) for f in (0.4, 0.8)} - {epochs})))
        if ctx.t == 0:
            return [self.main_stage(ctx, batch_size=o.ssil_batch_new, **changes,
                                    sampler=lambda c: ShuffleBatches(c.data.train, o.ssil_batch_new, c.generator,
                                                                     drop_last=o.ssil_drop_last))]
        if not o.ssil_ratio_preserving:
            return [self.main_stage(ctx, batch_size=o.ssil_batch_new + o.ssil_batch_memory, **changes)]
        return [self.main_stage(ctx, **changes, sampler=lambda c: RatioPreservingBatches(
            c, o.ssil_batch_new, o.ssil_batch_memory, drop_last=o.ssil_drop_last))]

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        if ctx.num_old == 0:
            ce = F.cross_entropy(logits, batch.y)
            return ce, {"ce": ce.detach()}
        o = self.options
        if o.ssil_separated:
            cls = L.separated_softmax_cross_entropy(logits, batch.y, ctx.num_old, batch.is_memory,
                                                   check_targets=False)
        else:
            cls = F.cross_entropy(logits, batch.y)
        if o.ssil_kd == "none":
            return cls, {"ss" if o.ssil_separated else "ce": cls.detach()}
        teacher = ctx.teacher_logits(batch.x).float()
        T = o.kd_temperature
        if o.ssil_kd == "task":
            kd = L.task_wise_kd(logits[:, : ctx.num_old], teacher, ctx.old_boundaries, T, t_squared=True)
        else:
            kd = L.kd_loss(logits[:, : ctx.num_old], teacher, T, t_squared=True)
        return cls + kd, {"ss" if o.ssil_separated else "ce": cls.detach(), "kd": kd.detach()}
