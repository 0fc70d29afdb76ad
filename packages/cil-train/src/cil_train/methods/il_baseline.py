"""IL-baseline (Wu et al. 2019, as used by Jodelet et al. 2022) and its BalancedS-CE variants.

``L = ρ·L_d + (1 − ρ)·L_c`` with ``ρ = C_old / C`` (numbers of classes),
``L_d = T²·KD_T(z[:, :C_old], ẑ)``, ``T = 2`` (METHODS.md §1). The classification term ``L_c`` is
softmax CE (``il-baseline``), BalancedS-CE with ``λ_c = α·n_c`` for old classes (``bsce``), or the
Relaxed BalancedS-CE with ``λ_c = ε`` for old classes and no memory at all (``bsce-relaxed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import cil_losses as L

import attrs

from ..options import number, option
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class BSCEOptions(KDOptions):
    bsce_alpha: float = option("weight α of old classes in λ_c = α·n_c", number(0.0, 1.0, lo_open=True), 1.0)


@attrs.frozen(kw_only=True)
class RelaxedOptions(KDOptions):
    relaxed_eps: float | None = option("λ of old classes (default 0.2 % of the mean class count)",
                                       number(0.0, optional=True))


@register
class ILBaseline(Method):
    name = "il-baseline"
    summary = "CE + T²·KD weighted by ρ = C_old/C (Wu et al. 2019; Jodelet et al. 2022)"
    memory = "optional"
    position = 20
    Options = KDOptions

    def classification_loss(self, ctx, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        l_c = self.classification_loss(ctx, logits, batch.y)
        if ctx.num_old == 0:
            return l_c, {"ce": l_c.detach()}
        T = self.options.kd_temperature
        l_d = L.kd_loss(logits[:, : ctx.num_old], ctx.teacher_logits(batch.x).float(), T, t_squared=True)
        rho = ctx.num_old / ctx.num_seen
        return rho * l_d + (1.0 - rho) * l_c, {"ce": l_c.detach(), "kd": l_d.detach()}


@register
class BalancedSoftmax(ILBaseline):
    name = "bsce"
    summary = "IL-baseline with BalancedS-CE, λ_c = α·n_c for old classes (Jodelet et al. ICANN 2021)"
    position = 30
    Options = BSCEOptions

    def alpha(self, ctx) -> float | torch.Tensor:
        return self.options.bsce_alpha

    def classification_loss(self, ctx, logits, y):
        return L.balanced_softmax_cross_entropy(logits, y, ctx.class_counts, num_old=ctx.num_old, alpha=self.alpha(ctx))


@register
class RelaxedBalancedSoftmax(ILBaseline):
    name = "bsce-relaxed"
    summary = "exemplar-free IL-baseline with Relaxed BalancedS-CE, λ_c = ε for old classes (Jodelet et al. CVIU 2022)"
    memory = "none"
    position = 50
    Options = RelaxedOptions

    def eps(self, ctx) -> float:
        if self.options.relaxed_eps is not None:
            return self.options.relaxed_eps
        return L.relaxed_eps_default(ctx.dataset_mean_count)

    def classification_loss(self, ctx, logits, y):
        return L.balanced_softmax_cross_entropy(logits, y, ctx.class_counts, num_old=ctx.num_old, eps=self.eps(ctx))
