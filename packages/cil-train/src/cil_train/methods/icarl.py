"""iCaRL (Rebuffi et al. CVPR 2017) as in PyCIL, and iCaRL + JIOC (IJCAI 2024; METHODS.md §3).

iCaRL: ``L = CE(z, y) + KD_T(z[:, :C_old], ẑ)``, ``T = 2``; herding exemplars; evaluated with the
CNN and the nearest-mean-of-exemplars classifier.

iCaRL + JIOC replaces the two terms by joint input/output coordination:
``L_JIOC = L_IC + γ1·L_OC + γ2·L_sup``. ``--jioc`` picks the ablation rows of the paper's Table 4:
``none`` (CE + KD = iCaRL), ``ic`` (L_IC + KD), ``oc`` (CE + L_OC + L_sup), ``both`` (L_JIOC).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

import cil_losses as L

import attrs

from ..options import boolean, choice, number, option
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class JIOCOptions(KDOptions):
    jioc: str = option("ablation: both (L_JIOC), ic (L_IC + KD), oc (CE + L_OC + L_sup), none (CE + KD)",
                       choice("both", "ic", "oc", "none"), "both")
    jioc_gamma1: float = option("weight γ1 of output coordination", number(0.0), 1.0)
    jioc_gamma2: float = option("weight γ2 of new-head suppression", number(0.0), 1.0)
    jioc_detach: bool = option("detach the input-coordination weight δ", boolean, True)
    jioc_normalize: bool = option("normalise δ to mean 1 over the batch", boolean, False)
    jioc_squared: bool = option("squared suppression variant", boolean, False)


def jioc_switches(options: Any) -> tuple[bool, bool]:
    """``(use_ic, use_oc)`` from ``--jioc both|ic|oc|none`` (the JIOC ablations of every base method); options
    without ``jioc``: ``(False, False)``."""
    mode = getattr(options, "jioc", "none")
    return mode in ("both", "ic"), mode in ("both", "oc")


def jioc_ignored_options(options: Any, *, distils_without_oc: bool) -> dict[str, str]:
    """The JIOC options ``--jioc`` leaves unread (for ``Method.ignored_options``): the δ switches without input
    coordination, γ2 and the squared suppression without output coordination, and γ1 with the temperature
    too when the base method has no distillation of its own to fall back on (``distils_without_oc`` false:
    DER; iCaRL's and FOSTER's KD keep γ1 and T)."""
    use_ic, use_oc = jioc_switches(options)
    ignored: dict[str, str] = {}
    if not use_ic:
        why = f"--jioc {options.jioc} has no input coordination"
        ignored.update(jioc_detach=why, jioc_normalize=why)
    if not use_oc:
        why = f"--jioc {options.jioc} has no output coordination"
        ignored.update(jioc_gamma2=why, jioc_squared=why)
        if not distils_without_oc:
            why += " and the method no distillation without it"
            ignored.update(jioc_gamma1=why, kd_temperature=why)
    return ignored


@register
class ICaRL(Method):
    name = "icarl"
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "CE + KD, herding, NME and CNN evaluation (Rebuffi et al. 2017)"
    memory = "optional"
    position = 70
    evaluation = ("cnn", "nme")
    Options = KDOptions

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        if ctx.num_old == 0:
            return ce, {"ce": ce.detach()}
        kd = L.kd_loss(logits[:, : ctx.num_old], ctx.teacher_logits(batch.x).float(), self.options.kd_temperature)
        return ce + kd, {"ce": ce.detach(), "kd": kd.detach()}


@register
class ICaRLJIOC(ICaRL):
    name = "icarl-jioc"
    summary = "iCaRL with joint input/output coordination; --jioc both|ic|oc|none for the ablations (IJCAI 2024)"
    memory = "required"
    position = 80
    Options = JIOCOptions
    incremental_only = ("kd_temperature", "jioc_gamma1", "jioc_gamma2", "jioc_squared")

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        return jioc_ignored_options(options, distils_without_oc=True)

    def loss(self, ctx, batch: Batch):
        cfg = self.options
        use_ic, use_oc = jioc_switches(cfg)
        logits = ctx.net(batch.x).float()
        if ctx.num_old == 0:
            if use_ic:
                ic = L.input_coordination_ce(logits, batch.y, detach_weight=cfg.jioc_detach,
                                             normalize=cfg.jioc_normalize, check_targets=False)
                return ic, {"ic": ic.detach()}
            ce = F.cross_entropy(logits, batch.y)
            return ce, {"ce": ce.detach()}
        teacher = ctx.teacher_logits(batch.x).float()
        loss = L.jioc_loss(
            logits, batch.y, teacher, ctx.old_boundaries, batch.is_memory,
            gamma1=cfg.jioc_gamma1, gamma2=cfg.jioc_gamma2, T=cfg.kd_temperature, use_ic=use_ic, use_oc=use_oc,
            detach_weight=cfg.jioc_detach, normalize=cfg.jioc_normalize, squared=cfg.jioc_squared, check_targets=False,
        )
        return loss, {"jioc": loss.detach()}
