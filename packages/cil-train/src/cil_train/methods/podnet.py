"""PODNet (Douillard et al., "PODNet: Pooled Outputs Distillation for Small-Tasks Incremental Learning",
ECCV 2020; METHODS.md §8) and PODNet with BalancedS-CE (Jodelet et al. CVIU 2022).

Network: the run's backbone without ReLU after the residual additions and a local-similarity classifier
with K proxies per class (``s_c = Σ_k softmax_k(s_{c,k}) s_{c,k}``, ``s_{c,k} = −‖f̂ − θ̂_{c,k}‖²``) and a
learnable scale η (init 1). New classes' proxies are imprinted from k-means centres of their normalised
features (the network before the phase's training); the old proxies are frozen. Loss in phase t ≥ 1
(the official ``_compute_loss``)::

    L = NCA(η·s, y) + λ_f·mean(1 − cos(f, f*)) + λ_c·POD-spatial(maps, maps*),
    λ_f = 1·sqrt(C_seen / C_new),  λ_c = 3·sqrt(C_seen / C_new)   (ImageNet: 10 and 8)

with NCA as the official code computes it (the 0.6 margin cancels; ``--podnet-nca paper`` for the paper's
hinged form), POD-spatial over the backbone's stage outputs (three for the CIFAR ResNets, as the LT-CIL
code). Every gradient is clamped to [−5, 5]. After the memory update, the classifier (all proxies, not η)
is finetuned on the memory alone: 20 epochs at a constant lr 0.05 (code, not paper).

``podnet-bsce``: the NCA term becomes BalancedS-CE ``CE(η·s + log n_c, y)`` and the finetuning is removed,
nothing else changes; ``podnet-bsce-relaxed``: no memory, ``λ_c = ε`` for the old classes.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

import cil_losses as L
from cil_models import IncrementalNet, kmeans_proxies

from ..options import choice, number, option
from .base import Batch, Method
from .cosine_common import (balanced_classification, new_class_features, relaxed_eps_option,
                            trainable_without_old_rows)
from .registry import register


@attrs.frozen(kw_only=True)
class PODNetOptions:
    podnet_proxies: int = option("proxies K per class of the local-similarity classifier", number(1, integer=True), 10)
    podnet_flat: float = option("base weight of POD-flat (× sqrt(C_seen/C_new); CIFAR 1, ImageNet 10)",
                                number(0.0), 1.0)
    podnet_spatial: float = option("base weight of POD-spatial (× sqrt(C_seen/C_new); CIFAR 3, ImageNet 8)",
                                   number(0.0), 3.0)
    podnet_nca: str = option("NCA as the official code computes it (margin cancels) or the paper's hinged form",
                             choice("code", "paper"), "code")
    podnet_margin: float = option("NCA margin δ (has no effect with --podnet-nca code)", number(0.0), 0.6)
    podnet_grad_clip: float = option("clamp every gradient element to [−c, c] (0: off)", number(0.0), 5.0)
    podnet_finetune_epochs: int = option("epochs of the classifier finetuning on the memory (podnet only; 0: off)",
                                         number(0, integer=True), 20)
    podnet_finetune_lr: float = option("constant learning rate of the finetuning (CIFAR 0.05, ImageNet 0.01)",
                                       number(0.0, lo_open=True), 0.05)


@attrs.frozen(kw_only=True)
class PODNetRelaxedOptions(PODNetOptions):
    relaxed_eps: float | None = relaxed_eps_option()


@register
class PODNet(Method):
    name = "podnet"
    summary = "local-similarity classifier + NCA, POD-spatial/flat distillation (Douillard et al. ECCV 2020)"
    memory = "required"
    position = 130
    evaluation = ("cnn", "nme")
    Options = PODNetOptions
    incremental_only = ("podnet_flat", "podnet_spatial", "podnet_finetune_epochs", "podnet_finetune_lr")
    no_fp16 = ("its gradient clamp (--podnet-grad-clip) acts in gradient hooks, on gradients that float16 loss "
               "scaling has multiplied by the scale")
    classification = "nca"       # the only two places the -bsce variants differ:
    balanced_finetuning = True   # the classification term, and no finetuning

    def __init__(self, run) -> None:
        super().__init__(run)
        self._clamps: list[Any] = []

    def build_network(self, in_channels: int) -> IncrementalNet:
        return IncrementalNet(self.run.backbone, head="local-similarity", in_channels=in_channels,
                              head_options={"proxies_per_class": self.options.podnet_proxies},
                              backbone_options={"block_relu": False})

    def grow_network(self, ctx) -> IncrementalNet:
        model = ctx.model
        if ctx.t == 0:
            model.expand(ctx.num_new)
            return model
        feats, labels = new_class_features(ctx)
        gen = torch.Generator().manual_seed(self.run.seed * 31337 + ctx.t)  # k-means++ draws on the CPU
        model.expand_imprinted(kmeans_proxies(feats, labels, ctx.num_new, self.options.podnet_proxies, generator=gen))
        return model

    def start_phase(self, ctx) -> None:
        self._remove_clamps()
        c = self.options.podnet_grad_clip
        if c > 0:  # the official code clamps through gradient hooks, before the optimiser sees them
            self._clamps = [p.register_hook(lambda g: g.clamp(-c, c)) for p in ctx.model.parameters()
                            if p.requires_grad]

    def stages(self, ctx):
        main = self.main_stage(ctx, parameters=trainable_without_old_rows)
        epochs = self.options.podnet_finetune_epochs
        if ctx.t == 0 or not (self.balanced_finetuning and epochs):
            return [main]
        finetune = self.main_stage(ctx, name="finetune", epochs=epochs, lr=self.options.podnet_finetune_lr,
                                   schedule="constant", after_memory=True,
                                   parameters=lambda m: list(m.head.blocks.parameters()))
        return [main, finetune]

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        ignored = {}
        if cls.classification != "nca":
            why = f"its classification term is {cls.classification}, not PODNet's NCA"
            ignored.update(podnet_nca=why, podnet_margin=why)
        if not cls.balanced_finetuning:
            why = "it has no balanced finetuning"
            ignored.update(podnet_finetune_epochs=why, podnet_finetune_lr=why)
        return ignored

    def classification_loss(self, ctx, similarities: torch.Tensor, scale: torch.Tensor,
                            target: torch.Tensor) -> torch.Tensor:
        o = self.options
        if self.classification == "nca":
            return L.podnet_nca_loss(similarities, target, scale, o.podnet_margin, mode=o.podnet_nca,
                                      check_targets=False)
        return balanced_classification(self.classification, ctx, scale * similarities, target,
                                       getattr(o, "relaxed_eps", None))

    def loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        model, o = ctx.model, self.options
        maps, feats = model.stage_features(batch.x)
        sims = model.head.similarity(feats).float()
        cls = self.classification_loss(ctx, sims, model.head.scale.float(), batch.y)
        if ctx.num_old == 0:
            return cls, {"cls": cls.detach()}
        with torch.no_grad():
            teacher_maps, teacher_feats = ctx.frozen_teacher().stage_features(batch.x)
        lam_f, lam_c = L.podnet_lambdas(ctx.num_seen, ctx.num_new, o.podnet_flat, o.podnet_spatial)
        flat = lam_f * L.pod_flat_loss(feats.float(), teacher_feats.float())
        spatial = lam_c * L.pod_spatial_loss([m.float() for m in maps], [m.float() for m in teacher_maps])
        return cls + flat + spatial, {"cls": cls.detach(), "flat": flat.detach(), "spatial": spatial.detach()}

    def end_phase(self, ctx) -> dict[str, float]:
        return {"podnet_scale": float(ctx.model.head.scale.detach())}

    def _remove_clamps(self) -> None:
        for handle in self._clamps:
            handle.remove()
        self._clamps = []


@register
class PODNetBalanced(PODNet):
    name = "podnet-bsce"
    summary = "PODNet with BalancedS-CE as its classification loss, no finetuning (Jodelet et al. 2022)"
    position = 131
    classification = "bsce"
    balanced_finetuning = False


@register
class PODNetRelaxed(PODNet):
    name = "podnet-bsce-relaxed"
    summary = "exemplar-free PODNet with Relaxed BalancedS-CE, λ_c = ε for old classes (Jodelet et al. 2022)"
    memory = "none"
    position = 132
    evaluation = ("cnn",)
    Options = PODNetRelaxedOptions
    classification = "relaxed"
    balanced_finetuning = False
