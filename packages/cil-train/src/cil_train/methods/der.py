"""DER: dynamically expandable representation (Yan et al., CVPR 2021; METHODS.md §10), and DER + JIOC
(IJCAI 2024; METHODS.md §11, ``methods/expansion-family.md`` §1 and §3.2).

Network. Phase ``t`` adds a feature extractor, a copy of the newest one (both official codes); the older
extractors are frozen (no gradient, batch norms kept in eval mode, run without autograd). The unified
linear head reads the concatenated features ``[f_1(x); …; f_t(x)]``: the old classes' rows keep their
weights and biases on the old columns (PyCIL ``DERNet.update_fc``), the new columns and the new rows are
drawn fresh. An auxiliary head on the newest extractor's features has ``C_new + 1`` outputs (output 0 =
"any old class"); it is dropped at the end of the phase and never used at inference.

Loss (phase t > 0): ``CE(z, y) + λ_a·CE(z_aux, ỹ)``, ``λ_a = 1`` (``--der-aux-weight``), every sample (new
data and memory); phase 0: ``CE``. No distillation, no teacher network.

After training (``--der-bias-correction``):
  * ``wa`` (default, PyCIL, the variant the JIOC tables were measured with): the new rows are scaled by
    ``γ = mean_old ‖W_c‖₂ / mean_new ‖W_c‖₂`` (full rows, biases untouched, no clamp);
  * ``balanced`` (official code, ``decouple``): the classifier-learning stage — the unified head is drawn
    again and trained alone (every extractor frozen, batch norms in eval mode) on a class-balanced subset of
    the phase data (every class cut to the smallest class count, drawn once, augmented), with
    ``CE(z/δ, y)``, ``δ = 5`` (``--der-balanced-temperature``; 1 on ImageNet), 30 epochs, lr 0.1 ÷10 at half
    (``--der-balanced-epochs``, ``--der-balanced-lr``); inference uses the raw ``z``;
  * ``none``.

Not implemented: the paper's channel-mask pruning (HAT-style masks with a sparsity loss, then removed
channels). It is in no public code — the official repository ships only the ``der_womask`` configurations
and PyCIL leaves it out — and every published number one can rerun is "DER w/o P"; the parameter count grows
by one extractor per phase here, as in those codes. Also not implemented: the official variant's 10-epoch
warm-up with head resets and its un-copied head (``reuse_oldfc: False``).

DER + JIOC (``der-jioc``): ``L_IC(z) + λ_a·CE(z_aux, ỹ) + γ1·L_OC(z, ẑ) + γ2·L_sup(z)``. ``L_IC`` replaces the
unified head's CE; ``L_OC`` and ``L_sup`` are added (DER has no distillation to replace). The teacher logits
``ẑ = W_{t−1}[f_1..f_{t−1}](x) + b_{t−1}`` are the previous phase's head (after its weight aligning) applied to
the frozen old features of the same forward pass: exactly the previous network's logits (those extractors
are frozen, in eval mode) without a second forward. ``--jioc ic|oc|none`` give the ablations (``none`` =
DER). Evaluation: CNN (the papers' numbers; ``--nme`` adds the nearest-mean classifier).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from cil_losses import expansion as E
from cil_models import IncrementalNet, weight_align

from ..options import choice, number, option
from ..stages import ShuffleBatches
from .base import Batch, Method
from .expansion_common import (balanced_subset, classification_term, distillation_terms, draw_rows_, head_on,
                               phase_generator)
from .icarl import JIOCOptions, jioc_ignored_options
from .registry import register


def _der_fields() -> dict[str, Any]:
    return {
        "der_aux_weight": option("weight λ_a of the auxiliary loss (C_new + 1 outputs)", number(0.0), 1.0),
        "der_bias_correction": option(
            "after each phase: wa (PyCIL: scale new rows), balanced (official: retrain the head on a class-balanced "
            "subset with CE(z/δ)) or none", choice("wa", "balanced", "none"), "wa"),
        "der_balanced_epochs": option("epochs of the classifier-learning stage (--der-bias-correction balanced)",
                                      number(1, integer=True), 30),
        "der_balanced_lr": option("learning rate of the classifier-learning stage", number(0.0, lo_open=True), 0.1),
        "der_balanced_temperature": option("temperature δ of the classifier-learning stage (CIFAR 5, ImageNet 1)",
                                           number(0.0, lo_open=True), 5.0),
    }


#: DER's options; DER + JIOC has them and JIOC's (the same flags as icarl-jioc: --jioc, --jioc-gamma1, ...)
DEROptions = attrs.make_class("DEROptions", _der_fields(), frozen=True, kw_only=True)
DERJIOCOptions = attrs.make_class("DERJIOCOptions", _der_fields(), bases=(JIOCOptions,), frozen=True, kw_only=True)


@register
class DER(Method):
    name = "der"
    summary = "one new frozen-after-use extractor per phase, unified head + auxiliary head, WA (Yan et al. 2021)"
    memory = "optional"
    position = 130
    evaluation = ("cnn",)
    Options = DEROptions
    incremental_only = ("der_aux_weight", "der_bias_correction", "der_balanced_epochs", "der_balanced_lr",
                        "der_balanced_temperature")

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        if options.der_bias_correction == "balanced":
            return {}
        why = ("the classifier-learning stage runs only with --der-bias-correction balanced "
               f"(here {options.der_bias_correction})")
        return dict.fromkeys(("der_balanced_epochs", "der_balanced_lr", "der_balanced_temperature"), why)

    def __init__(self, run: Any) -> None:
        super().__init__(run)
        self._old_head: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._head_redrawn = -1  # phase whose head the classifier-learning stage has re-drawn

    def make_teacher(self, model: IncrementalNet) -> None:
        """No teacher network: JIOC's teacher logits come from the frozen old features (see the module)."""
        return None

    def grow_network(self, ctx) -> IncrementalNet:
        model = ctx.model
        if ctx.t == 0:
            model.expand(ctx.num_new)
            return model
        head = model.head
        bias = head.full_bias()
        self._old_head = (head.full_weight().detach().clone(), None if bias is None else bias.detach().clone())
        model.add_extractor(init="copy", new_columns="random")
        model.freeze_extractors()
        model.expand(ctx.num_new)
        model.set_aux_head(ctx.num_new + 1)
        return model

    # -- training ------------------------------------------------------------------------------
    def stages(self, ctx):
        main = self.main_stage(ctx)
        o = self.options
        if ctx.t == 0 or o.der_bias_correction != "balanced":
            return [main]
        epochs = o.der_balanced_epochs
        balanced = self.main_stage(
            ctx, name="classifier", epochs=epochs, lr=o.der_balanced_lr, schedule="step",
            lr_steps=(epochs // 2,) if epochs > 1 else (), lr_decay=0.1,
            sampler=lambda c: ShuffleBatches(self._balanced_positions(c), main.batch_size, c.generator),
            parameters=lambda model: self._classifier_parameters(ctx, model), loss=self.classifier_loss)
        return [main, balanced]

    def _balanced_positions(self, ctx) -> torch.Tensor:
        train = ctx.data.train
        labels = ctx.data.y[train.to(ctx.data.y.device)].cpu()
        return balanced_subset(train, labels, phase_generator(self.run, ctx.t, 11))

    def _classifier_parameters(self, ctx, model: IncrementalNet) -> list[torch.nn.Parameter]:
        """The start of the classifier-learning stage: every extractor frozen, the unified head drawn again
        (once per phase: not again when a run resumes inside the stage)."""
        model.freeze_extractors(range(model.num_extractors))
        if self._head_redrawn != ctx.t:
            gen = phase_generator(self.run, ctx.t, 12)
            with torch.no_grad():
                for block in model.head.blocks:
                    draw_rows_(block.weight, gen)
                    if block.bias is not None:
                        block.bias.zero_()
            self._head_redrawn = ctx.t
        return list(model.head.parameters())

    def classifier_loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = ctx.net(batch.x).float()
        loss = F.cross_entropy(logits / self.options.der_balanced_temperature, batch.y)
        return loss, {"ce": loss.detach()}

    def loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        model = ctx.model
        logits, feats = ctx.net(batch.x, return_features=True)
        z = logits.float()
        cls, key = classification_term(self.options, z, batch.y)
        if ctx.t == 0:
            return cls, {key: cls.detach()}
        aux = E.auxiliary_loss(model.aux_logits(feats).float(), batch.y, ctx.num_old, check_targets=False)
        total = cls + self.options.der_aux_weight * aux
        figures = {key: cls.detach(), "aux": aux.detach()}
        if getattr(self.options, "jioc", "none") != "none":
            old_logits = self._old_logits(model, feats)
            extra, parts = distillation_terms(self.options, ctx, z, z, old_logits, batch.is_memory, kd_if_no_oc=False)
            total = total + extra
            figures.update(parts)
        return total, figures

    def _old_logits(self, model: IncrementalNet, feats: torch.Tensor) -> torch.Tensor:
        """The previous network's logits from the frozen old extractors' columns of this forward pass."""
        self._old_head = weight, bias = head_on(self._old_head, feats.device)
        old = feats[:, : weight.shape[1]].detach().float()
        return F.linear(old, weight, bias)

    def end_phase(self, ctx) -> dict[str, float]:
        model = ctx.model
        figures: dict[str, float] = {}
        if ctx.t > 0 and self.options.der_bias_correction == "wa":
            figures["wa_gamma"] = float(weight_align(model.head, ctx.num_old))
        model.remove_aux_head()
        counts = model.parameter_count()
        figures.update(extractors=float(model.num_extractors), parameters=float(counts["total"]))
        return figures

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"head_redrawn": self._head_redrawn}
        if self._old_head is not None:
            state["old_weight"], state["old_bias"] = self._old_head
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._head_redrawn = int(state.get("head_redrawn", -1))
        if "old_weight" in state:
            self._old_head = (state["old_weight"], state.get("old_bias"))


@register
class DERJIOC(DER):
    name = "der-jioc"
    summary = "DER with joint input/output coordination (L_IC, + L_OC, + L_sup); --jioc both|ic|oc|none (IJCAI 2024)"
    memory = "required"
    position = 131
    Options = DERJIOCOptions
    incremental_only = DER.incremental_only + ("kd_temperature", "jioc_gamma1", "jioc_gamma2", "jioc_squared")

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        return {**super().ignored_options(options), **jioc_ignored_options(options, distils_without_oc=False)}
