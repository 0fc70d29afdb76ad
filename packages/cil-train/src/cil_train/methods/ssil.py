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

from .base import Batch, Recipe, register


@register
class SSIL(Recipe):
    name = "ssil"
    summary = "separated softmax + ratio-preserving batches + task-wise KD, lr/(t+1) (Ahn et al. 2021)"
    memory = "required"
    sampler = "ratio_preserving"

    def phase_lr(self, t: int) -> float:
        return self.cfg.lr / (t + 1)

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        if ctx.num_old == 0:
            ce = F.cross_entropy(logits, batch.y)
            return ce, {"ce": ce.detach()}
        ss = L.separated_softmax_cross_entropy(logits, batch.y, ctx.num_old, batch.is_memory)
        teacher = ctx.teacher_logits(batch.x).float()
        T = self.cfg.kd_temperature
        if self.cfg.ssil_tkd:
            kd = L.task_wise_kd(logits[:, : ctx.num_old], teacher, ctx.old_boundaries, T, t_squared=True)
        else:
            kd = L.kd_loss(logits[:, : ctx.num_old], teacher, T, t_squared=True)
        return ss + kd, {"ss": ss.detach(), "kd": kd.detach()}
