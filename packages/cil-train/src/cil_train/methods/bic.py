"""BiC: bias correction (Wu et al., "Large Scale Incremental Learning", CVPR 2019; METHODS.md §9).

Each incremental phase has two stages. A class-balanced validation split is held out first (10 % of
the per-class memory share of every seen class, drawn from the new data and the memory; never trained
on in stage 1).

1. **Representation and classifier**, on the rest: ``L = ρ·KD_T(z[:, :C_old], ẑ) + (1 − ρ)·CE(z, y)`` with
   ``ρ = C_old / C`` and ``T = 2`` (no T² factor, as the official code). The teacher applies its own
   newest (α, β) pair to its newest task's logits — the previous phase's correction.
2. **Bias correction**, on the validation split only, without augmentation: the network is fixed (in
   evaluation mode, so its batch norms keep stage 1's running statistics, as FACIL's ``model.eval()``) and
   only the newest task's pair of the bias layer ``q = [z_old, α·z_new + β]`` (α = 1, β = 0 at the start)
   is trained with ``CE(q, y) + 0.05·β²`` (the official code's penalty on β; α is not regularised).

The bias layer is ``cil_models.BiasCorrection`` with ``apply_to="newest"``: at evaluation the newest
task's logits are corrected; when the next phase adds a task its identity pair becomes the newest, so the
student's stage 1 sees uncorrected logits while the teacher keeps its correction (the official semantics).
Stage 2 has ``--bic-bias-epochs`` epochs (default 2 × the main stage's, as the official 200 vs 100) with the
rate divided by 10 at 30 %, 60 %, 80 % and 90 % of them (the official 60/120/160/180 of 200).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

import cil_losses as L
from cil_models import IncrementalNet

from ..config import memory_budget
from ..options import number, option
from ..stages import ShuffleBatches
from .base import Batch, KDOptions, Method
from .registry import register

BETA_PENALTY = 0.05
BIAS_STEPS = (0.3, 0.6, 0.8, 0.9)


@attrs.frozen(kw_only=True)
class BiCOptions(KDOptions):
    bic_validation: float = option("share of the per-class memory held out as the balanced validation split",
                                   number(0.0, 1.0, lo_open=True), 0.1)
    bic_bias_epochs: int | None = option("epochs of the bias-correction stage (default: 2 × the main stage's)",
                                         number(1, optional=True, integer=True))
    bic_bias_lr: float = option("learning rate of the bias-correction stage", number(0.0, lo_open=True), 0.1)


def bias_correction_loss(logits: torch.Tensor, target: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """BiC's stage-2 loss ``CE(q, y) + 0.05·β²`` on the corrected logits ``q`` (Wu et al. 2019, official code);
    computed in float32 at least (float64 stays float64)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype), target) + BETA_PENALTY * (beta.to(dtype) ** 2).sum()


@register
class BiC(Method):
    name = "bic"
    summary = "ρ·KD + (1−ρ)·CE, then α·z_new + β fitted on a held-out balanced split (Wu et al. 2019)"
    memory = "required"
    position = 95
    Options = BiCOptions
    incremental_only = ("kd_temperature", "bic_validation", "bic_bias_epochs", "bic_bias_lr")

    def build_network(self, in_channels: int) -> IncrementalNet:
        return IncrementalNet(self.run.backbone, in_channels=in_channels, bias_correction="newest")

    def held_out_per_class(self, phase) -> int:
        if phase.index == 0:
            return 0
        return memory_budget(self.run).held_out_per_class(phase.num_seen, self.options.bic_validation)

    def stages(self, ctx):
        main = self.main_stage(ctx, parameters=lambda model: model.parameters_without_bias_correction())
        if ctx.t == 0:
            return [main]
        epochs = self.options.bic_bias_epochs or 2 * main.epochs
        steps = tuple(sorted({max(1, round(f * epochs)) for f in BIAS_STEPS} - {epochs}))
        bias = self.main_stage(
            ctx, name="bias-correction", epochs=epochs, lr=self.options.bic_bias_lr, schedule="step",
            lr_steps=steps, lr_decay=0.1, weight_decay=0.0, augment=False, train_mode=False,
            sampler=lambda c: ShuffleBatches(c.data.val, main.batch_size, c.generator),
            parameters=lambda model: model.bias_correction.newest_parameters(), loss=self.bias_loss)
        return [main, bias]

    def loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = ctx.net(batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        if ctx.num_old == 0:
            return ce, {"ce": ce.detach()}
        kd = L.kd_loss(logits[:, : ctx.num_old], ctx.teacher_logits(batch.x).float(), self.options.kd_temperature)
        rho = ctx.num_old / ctx.num_seen
        return rho * kd + (1.0 - rho) * ce, {"ce": ce.detach(), "kd": kd.detach()}

    def bias_loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        alpha, beta = ctx.model.bias_correction.newest_parameters()
        loss = bias_correction_loss(ctx.net(batch.x), batch.y, beta)
        return loss, {"alpha": alpha.detach().sum(), "beta": beta.detach().sum()}

    def end_phase(self, ctx) -> dict[str, float]:
        if ctx.t == 0:
            return {}
        alpha, beta = ctx.model.bias_correction.newest_parameters()
        return {"bic_alpha": float(alpha.detach()), "bic_beta": float(beta.detach())}

