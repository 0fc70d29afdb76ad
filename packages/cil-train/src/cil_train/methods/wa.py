"""WA: weight aligning (Zhao et al. CVPR 2020; METHODS.md §5).

``L = (1 − λ)·CE + λ·KD_T(z[:, :C_old], ẑ)``, ``λ = C_old / C``, ``T = 2`` (T² factor with
``--wa-t-squared``). After each incremental phase the new rows of the classifier are scaled by
``γ = mean_old ‖W_c‖_p / mean_new ‖W_c‖_p`` (``--wa-p``), clamped to γ ≤ 1 as in the authors' code (the
default since round 2; ``--no-wa-clamp`` is PyCIL's unclamped form: on an ordered long tail the new
tail classes have the smaller norms, γ grew to ~1.6 and scaled new rows *up*); optionally the FC
weights are clipped to ≥ 0 after every step (``--wa-clip``, the authors' code). ``--no-wa-align`` skips the
aligning step: the paper's un-aligned baseline (its ablation), to test the claim that aligning helps.
"""

from __future__ import annotations

import torch.nn.functional as F

import cil_losses as L
from cil_models import clip_nonnegative_, weight_align

import attrs

from ..options import boolean, number, option
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class WAOptions(KDOptions):
    wa_align: bool = option("weight aligning after each phase (--no-wa-align: the un-aligned baseline of WA's "
                            "ablation, the same CE + KD training without the aligning step)", boolean, True)
    wa_p: float = option("norm p of weight aligning", number(0.0, lo_open=True), 2.0)
    wa_clamp: bool = option("clamp γ ≤ 1 (authors' code; --no-wa-clamp: PyCIL's form)", boolean, True)
    wa_clip: bool = option("clip FC weights to ≥ 0 after every step (authors' code)", boolean, False)
    wa_t_squared: bool = option("T² factor on the KD term", boolean, False)


@register
class WeightAligning(Method):
    name = "wa"
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "(1−λ)·CE + λ·KD, then scale new FC rows to the old rows' mean norm (Zhao et al. 2020)"
    memory = "optional"
    position = 90
    Options = WAOptions

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        if options.wa_align:
            return {}
        why = "weight aligning is off (--no-wa-align)"
        return {"wa_p": why, "wa_clamp": why}

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        if ctx.num_old == 0:
            return ce, {"ce": ce.detach()}
        kd = L.kd_loss(logits[:, : ctx.num_old], ctx.teacher_logits(batch.x).float(), self.options.kd_temperature,
                       t_squared=self.options.wa_t_squared)
        lam = ctx.num_old / ctx.num_seen
        return (1.0 - lam) * ce + lam * kd, {"ce": ce.detach(), "kd": kd.detach()}

    def after_step(self, ctx) -> None:
        if self.options.wa_clip:
            clip_nonnegative_(ctx.model.head)

    def end_phase(self, ctx) -> dict[str, float]:
        if ctx.num_old == 0 or not self.options.wa_align:
            return {}
        gamma = weight_align(ctx.model.head, ctx.num_old, p=self.options.wa_p, clamp=self.options.wa_clamp)
        return {"wa_gamma": float(gamma)}
