"""IL-baseline (Wu et al. 2019, as used by Jodelet et al. 2022) and its BalancedS-CE variants.

``L = ρ·L_d + (1 − ρ)·L_c`` with ``ρ = C_old / C`` (numbers of classes),
``L_d = T²·KD_T(z[:, :C_old], ẑ)``, ``T = 2`` (METHODS.md §1). The classification term ``L_c`` is
softmax CE (``il-baseline``), BalancedS-CE with ``λ_c = α·n_c`` for old classes (``bsce``), or the
Relaxed BalancedS-CE with ``λ_c = ε`` for old classes and no memory at all (``bsce-relaxed``).

``--il-correction`` gives the bias-correction baselines of the BalancedS-CE paper's Table 6 (Jodelet et
al. CVIU 2022 §4.3.4; the paper gives prose only, the exact forms are those of
``shared/methods/cosine-family.md`` §4), in incremental phases:

* ``memory-oversampling``: batches in which new and replayed samples are equally likely
  (:class:`~cil_train.stages.MemoryOversampling`, an epoch of ``2·N_new`` draws with replacement);
* ``class-oversampling``: every exemplar repeated ``round(n̄_new / n̄_old)`` times
  (:class:`~cil_train.stages.ClassOversampling`);
* ``loss-rescaling``: ``L_c = (1/B) Σ_i w_{y_i}·CE_i`` with ``w_c = N / (C·n_c)`` (mean weight 1 over an epoch);
* ``balanced-finetuning``: after the memory update, the whole network is finetuned on the memory (every
  seen class, the new ones included) with the same loss, EEIL's recipe scaled to the run: ``--il-finetune-epochs``
  (default: 12 % of the main stage's epochs, EEIL's 30 of 250), lr 0.01 ÷10 at one and two thirds;
* ``separated-softmax``: new samples' CE over the new classes' logits, replayed samples' CE over the old
  classes' logits (SS-IL's separated softmax), with memory oversampling; the IL-baseline's KD is kept.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

import cil_losses as L

from ..options import choice, number, option
from ..stages import ClassOversampling, MemoryOversampling
from .base import Batch, KDOptions, Method
from .registry import register

CORRECTIONS = ("none", "memory-oversampling", "class-oversampling", "loss-rescaling", "balanced-finetuning",
               "separated-softmax")


@attrs.frozen(kw_only=True)
class ILOptions(KDOptions):
    il_correction: str = option("bias correction of the BalancedS-CE paper's Table 6 (see the method's docstring)",
                                choice(*CORRECTIONS), "none")
    il_finetune_epochs: int | None = option("balanced-finetuning epochs (default: 12 % of the main stage's, ≥ 1)",
                                            number(1, optional=True, integer=True))


def class_rescaled_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """``(1/B) Σ_i w_{y_i}·CE(z_i, y_i)`` with ``w_c = N / (C·n_c)``: per-sample CE scaled inversely to its class's
    count ``n_c`` in the phase's training data (``N = Σ n_c``, ``C`` classes), a plain mean over the batch
    (the "loss rescaling" baseline of Jodelet et al. CVIU 2022, Table 6). Classes without samples get weight 0."""
    counts = class_counts.to(logits.device, torch.float64)
    present = counts > 0
    weights = torch.where(present, counts.sum() / (counts.numel() * counts.clamp_min(1)), torch.zeros_like(counts))
    per_sample = F.cross_entropy(logits, target, reduction="none")
    return (weights.to(per_sample.dtype)[target] * per_sample).mean()


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
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "CE + T²·KD weighted by ρ = C_old/C (Wu et al. 2019; Jodelet et al. 2022)"
    memory = "optional"
    position = 20
    Options = ILOptions

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        correction = getattr(options, "il_correction", None)
        if correction in (None, "balanced-finetuning"):
            return {}
        return {"il_finetune_epochs": f"only --il-correction balanced-finetuning finetunes (here {correction})"}

    @property
    def correction(self) -> str:
        return getattr(self.options, "il_correction", "none")

    def stages(self, ctx):
        main = self.main_stage(ctx)
        if ctx.t == 0 or self.correction == "none":
            return [main]
        if self.correction in ("memory-oversampling", "separated-softmax"):
            return [self.main_stage(ctx, sampler=lambda c: MemoryOversampling(c, main.batch_size))]
        if self.correction == "class-oversampling":
            return [self.main_stage(ctx, sampler=lambda c: ClassOversampling(c, main.batch_size))]
        if self.correction == "balanced-finetuning":
            epochs = self.options.il_finetune_epochs or max(1, round(0.12 * main.epochs))
            steps = tuple(sorted({max(1, round(epochs * f)) for f in (1 / 3, 2 / 3)} - {epochs}))
            return [main, self.main_stage(ctx, name="balanced-finetuning", epochs=epochs, lr=0.01, schedule="step",
                                          lr_steps=steps, lr_decay=0.1, after_memory=True)]
        return [main]  # loss-rescaling changes the loss only

    def classification_loss(self, ctx, logits: torch.Tensor, y: torch.Tensor, is_memory: torch.Tensor) -> torch.Tensor:
        if ctx.num_old and self.correction == "loss-rescaling":
            return class_rescaled_cross_entropy(logits, y, ctx.class_counts)
        if ctx.num_old and self.correction == "separated-softmax":
            return L.separated_softmax_cross_entropy(logits, y, ctx.num_old, is_memory, check_targets=False)
        return F.cross_entropy(logits, y)

    def loss(self, ctx, batch: Batch):
        logits = ctx.net(batch.x).float()
        l_c = self.classification_loss(ctx, logits, batch.y, batch.is_memory)
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

    def classification_loss(self, ctx, logits, y, is_memory):
        return L.balanced_softmax_cross_entropy(logits, y, ctx.class_counts, num_old=ctx.num_old, alpha=self.alpha(ctx),
                                               check_targets=False)


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

    def classification_loss(self, ctx, logits, y, is_memory):
        return L.balanced_softmax_cross_entropy(logits, y, ctx.class_counts, num_old=ctx.num_old, eps=self.eps(ctx),
                                               check_targets=False)
