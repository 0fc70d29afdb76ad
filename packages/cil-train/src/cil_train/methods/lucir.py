"""LUCIR (Hou et al., "Learning a Unified Classifier Incrementally via Rebalancing", CVPR 2019; METHODS.md §7)
and LUCIR with BalancedS-CE (Jodelet et al. CVIU 2022).

Network: the run's backbone with the last ReLU removed and a cosine classifier ``z = σ·cos(f, W)`` with one
learnable scale σ (init 1). New classes are imprinted: ``W_c = normalise(mean f̂) · mean old-row norm`` from
the network before the phase's training; the old classes' rows are frozen (the official code's ``fc1``).
Loss in phase t ≥ 1 (the official ``incremental_train_and_eval_MR_LF``)::

    L = CE(σ·cos, y) + λ·mean(1 − cos(f, f*)) + λ_mr·L_mr,   λ = λ_base·sqrt(C_old / C_new)

with ``L_mr`` the margin ranking on replayed samples (unscaled cosines, m = 0.5, K = 2 hardest new
classes, mean over the H·K pairs). Class-balanced finetuning of the classifier (``--lucir-cbf``; off by
default as in the official CIFAR scripts, on for ImageNet) runs after the memory update on the memory alone:
20 epochs, lr 0.01 ÷10 at 10, the classifier's rows only (not σ), the network in evaluation mode (the
official ``--ft_flag 2`` with ``fix_bn``: the batch norms keep stage 1's statistics). Evaluated with the CNN
and the NME classifier.

``lucir-bsce``: the CE term becomes BalancedS-CE ``CE(σ·cos + log n_c, y)`` and the balanced finetuning is
removed, nothing else changes; ``lucir-bsce-relaxed``: no memory, ``λ_c = ε`` for the old classes (the margin
ranking has no anchor without a memory and vanishes).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

import cil_losses as L
from cil_models import IncrementalNet, normalized_class_means

from ..options import boolean, choice, number, option
from .base import Batch, Method
from .cosine_common import (balanced_classification, new_class_features, relaxed_eps_option,
                            trainable_without_old_rows)
from .registry import register


@attrs.frozen(kw_only=True)
class LUCIROptions:
    lucir_lambda_base: float = option("λ_base of the less-forget weight λ = λ_base·sqrt(C_old/C_new) (CIFAR 5, "
                                      "ImageNet 10)", number(0.0), 5.0)
    lucir_margin: float = option("margin m of the margin ranking", number(0.0), 0.5)
    lucir_k: int = option("hard negatives K (new classes) per replayed sample", number(1, integer=True), 2)
    lucir_mr_weight: float = option("weight λ_mr of the margin ranking", number(0.0), 1.0)
    lucir_mr_reduction: str = option("mean over the H·K pairs (official code) or the paper's sum over K",
                                     choice("mean", "sum_over_k"), "mean")
    lucir_imprint: bool = option("imprint new classes' weights from their features", boolean, True)
    lucir_cbf: bool = option("class-balanced finetuning of the classifier after the memory update (lucir only)",
                             boolean, False)
    lucir_cbf_epochs: int = option("epochs of the class-balanced finetuning", number(1, integer=True), 20)


@attrs.frozen(kw_only=True)
class LUCIRRelaxedOptions(LUCIROptions):
    relaxed_eps: float | None = relaxed_eps_option()


@register
class LUCIR(Method):
    name = "lucir"
    summary = "cosine classifier, imprinting, less-forget + margin ranking (Hou et al. CVPR 2019)"
    memory = "required"
    position = 120
    evaluation = ("cnn", "nme")
    Options = LUCIROptions
    incremental_only = ("lucir_lambda_base", "lucir_margin", "lucir_k", "lucir_mr_weight", "lucir_mr_reduction",
                        "lucir_imprint", "lucir_cbf", "lucir_cbf_epochs")
    classification = "ce"        # the only two places the -bsce variants differ:
    balanced_finetuning = True   # the classification term, and no class-balanced finetuning

    def build_network(self, in_channels: int) -> IncrementalNet:
        return IncrementalNet(self.run.backbone, head="cosine", in_channels=in_channels,
                              backbone_options={"last_relu": False})

    def grow_network(self, ctx) -> IncrementalNet:
        model = ctx.model
        if ctx.t == 0 or not self.options.lucir_imprint:
            model.expand(ctx.num_new)
            return model
        feats, labels = new_class_features(ctx)
        means, _ = normalized_class_means(feats, labels, ctx.num_new)
        model.expand_imprinted(means)
        return model

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        if cls.balanced_finetuning:
            return {}
        why = "it has no class-balanced finetuning"
        return {"lucir_cbf": why, "lucir_cbf_epochs": why}

    def stages(self, ctx):
        main = self.main_stage(ctx, parameters=trainable_without_old_rows)
        if ctx.t == 0 or not (self.balanced_finetuning and self.options.lucir_cbf):
            return [main]
        epochs = self.options.lucir_cbf_epochs
        cbf = self.main_stage(ctx, name="cbf", epochs=epochs, lr=0.01, schedule="step",
                              lr_steps=(epochs // 2,) if epochs > 1 else (), lr_decay=0.1, weight_decay=1e-4,
                              after_memory=True, parameters=lambda m: list(m.head.blocks.parameters()),
                              train_mode=False)  # the official --ft_flag 2: fix_bn, batch norms in eval mode
        return [main, cbf]

    def loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        model, o = ctx.model, self.options
        feats = model.features(batch.x)
        cos = model.head.cosine(feats).float()
        ce = balanced_classification(self.classification, ctx, model.head.scale * cos, batch.y,
                                     getattr(o, "relaxed_eps", None))
        if ctx.num_old == 0:
            return ce, {"ce": ce.detach()}
        with torch.no_grad():
            teacher_feats = ctx.frozen_teacher().features(batch.x)
        lf = L.lucir_lambda(ctx.num_old, ctx.num_new, o.lucir_lambda_base) * L.less_forget_loss(
            feats.float(), teacher_feats.float())
        mr = o.lucir_mr_weight * L.margin_ranking_loss(cos, batch.y, ctx.num_old, o.lucir_margin, o.lucir_k,
                                                        pair_reduction=o.lucir_mr_reduction, check_targets=False)
        return ce + lf + mr, {"ce": ce.detach(), "lf": lf.detach(), "mr": mr.detach()}


@register
class LUCIRBalanced(LUCIR):
    name = "lucir-bsce"
    summary = "LUCIR with BalancedS-CE as its classification loss, no balanced finetuning (Jodelet et al. 2022)"
    position = 121
    classification = "bsce"
    balanced_finetuning = False


@register
class LUCIRRelaxed(LUCIR):
    name = "lucir-bsce-relaxed"
    summary = "exemplar-free LUCIR with Relaxed BalancedS-CE, λ_c = ε for old classes (Jodelet et al. 2022)"
    memory = "none"
    position = 122
    evaluation = ("cnn",)
    Options = LUCIRRelaxedOptions
    classification = "relaxed"
    balanced_finetuning = False
