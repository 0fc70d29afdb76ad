"""SS-IL: separated softmax with ratio-preserving batches and task-wise KD (Ahn et al. ICCV 2021; METHODS.md §2).

Each step concatenates ``B_n`` samples of the new data (``--ssil-batch-new``, default 128) and ``B_r``
cycled memory samples (``--ssil-batch-memory``, default 32). ``L = L_SS + L_TKD``: separated softmax CE
(new samples over the new classes, replayed samples over the old classes) plus task-wise KD
``Σ_{s<t} T²·KL(softmax(ẑ[S_s]/T) ‖ softmax(z[S_s]/T))`` on every sample, ``T = 2``. Phase 0 is plain
CE. The learning rate of phase ``t`` is ``lr / (t + 1)``. ``--ssil-tkd false`` replaces task-wise KD by
one KD over all old classes (the earlier arXiv variant).
"""

from __future__ import annotations

import torch.nn.functional as F

import cil_losses as L

import attrs

from ..options import boolean, number, option
from ..stages import RatioPreservingBatches
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class SSILOptions(KDOptions):
    ssil_batch_new: int = option("new-data samples per batch (B_n)", number(1, integer=True), 128)
    ssil_batch_memory: int = option("memory samples per batch (B_r)", number(1, integer=True), 32)
    ssil_tkd: bool = option("task-wise KD (ICCV version); false = the earlier plain-KD variant", boolean, True)


@register
class SSIL(Method):
    name = "ssil"
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "separated softmax + ratio-preserving batches + task-wise KD, lr/(t+1) (Ahn et al. 2021)"
    memory = "required"
    position = 100
    Options = SSILOptions

    def phase_lr(self, t: int) -> float:
        return super().phase_lr(t) / (t + 1)

    def stages(self, ctx):
        if ctx.t == 0:
            return [self.main_stage(ctx)]
        o = self.options
        return [self.main_stage(ctx, sampler=lambda c: RatioPreservingBatches(c, o.ssil_batch_new, o.ssil_batch_memory))]

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        if ctx.num_old == 0:
            ce = F.cross_entropy(logits, batch.y)
            return ce, {"ce": ce.detach()}
        ss = L.separated_softmax_cross_entropy(logits, batch.y, ctx.num_old, batch.is_memory)
        teacher = ctx.teacher_logits(batch.x).float()
        T = self.options.kd_temperature
        if self.options.ssil_tkd:
            kd = L.task_wise_kd(logits[:, : ctx.num_old], teacher, ctx.old_boundaries, T, t_squared=True)
        else:
            kd = L.kd_loss(logits[:, : ctx.num_old], teacher, T, t_squared=True)
        return ss + kd, {"ss": ss.detach(), "kd": kd.detach()}
