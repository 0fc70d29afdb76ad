"""LwF for class-incremental learning (Li & Hoiem, ECCV 2016; exemplar-free).

``L = CE(z[:, S_t], y − C_old) + λ·KD_T(z[:, :C_old], ẑ)`` with ``T = 2``, ``λ = 3`` (``--lwf-lambda``):
the classification term uses the new classes' logits only, as in PyCIL's LwF; evaluation is over all
seen classes.
"""

from __future__ import annotations

import torch.nn.functional as F

import cil_losses as L

import attrs

from ..options import number, option
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class LwFOptions(KDOptions):
    lwf_lambda: float = option("weight λ of the distillation term", number(0.0), 3.0)


@register
class LwF(Method):
    name = "lwf"
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "exemplar-free: CE on the new classes + λ·KD on the old ones (Li & Hoiem 2016)"
    memory = "none"
    position = 60
    Options = LwFOptions

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        ce = F.cross_entropy(logits[:, ctx.num_old :], batch.y - ctx.num_old)
        if ctx.num_old == 0:
            return ce, {"ce": ce.detach()}
        kd = L.kd_loss(logits[:, : ctx.num_old], ctx.teacher_logits(batch.x).float(), self.options.kd_temperature)
        return ce + self.options.lwf_lambda * kd, {"ce": ce.detach(), "kd": kd.detach()}
