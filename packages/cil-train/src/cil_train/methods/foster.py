"""FOSTER: feature boosting and compression (Wang et al., ECCV 2022; METHODS.md §11,
``methods/expansion-family.md`` §2), and FOSTER + JIOC (IJCAI 2024; ``expansion-family.md`` §3.2).

Phase 0: one extractor and a linear head, ``CE``. Each phase t > 0 has two stages, each with its own budget:

1. **Boosting** (the main stage's epochs, rate and schedule). The network gains a second extractor, a copy
   of the compressed one ``Φ_old``, which is frozen (no gradient, batch norms in eval mode, no autograd). The
   unified head reads ``[Φ_old(x); φ_new(x)]``: old rows keep their weights and biases on ``Φ_old``'s columns,
   the rest is drawn fresh, and the whole head trains. The feature-enhancement head ``z_fe`` reads
   ``φ_new(x)`` with one output per seen class. Loss, every sample::

       L = CE(z ⊘ w, y) + CE(z_fe, y) + KD_T(z[:, :C_old], z_old)

   with ``w_c`` the effective-number weights of β1 = 0.96 (``--foster-beta1``) from the *true* class counts
   of the phase (new classes: their images; old classes: their exemplars — the official code's 500 hard-code
   and index-sum counts are bugs; ``--foster-counts official`` counts every new class as 500 images, as that
   code and PyCIL do on CIFAR-100 and JIOC's FOSTER rows did), ``T = 2`` (``--kd-temperature``), no ``T²``.
   ``z_old`` is the previous network's logits: its head applied to ``Φ_old``'s columns of the same forward pass
   (no second forward).
2. **Compression** (``--foster-compression-epochs``, default the main stage's × 130/170 as the official
   130 vs 170; ``--foster-compression-lr``, default the main stage's; the same schedule; **no weight
   decay**). The boosted network becomes the frozen teacher; the network itself becomes the student — one
   extractor, ``Φ_old`` (trainable again), a head whose old rows are the previous head and whose new rows are
   drawn fresh (the official ``_snet``) — trained with the balanced KD only (β2 = 0.97, ``--foster-beta2``)::

       L_BKD = −(1/B) Σ_i Σ_c p̃_ic log softmax(z^S_i/T)_c,  p̃_ic ∝ w_c softmax(z^T_i/T)_c

So the network has one extractor again after every phase (its size stays that of one backbone plus the
head). The boosted teacher is kept in the run's teacher slot during compression, so a checkpoint in the
middle of compression holds both networks and ``--resume`` continues exactly.

Evaluation (CNN; ``--nme`` adds the nearest-mean classifier). Both the official code and PyCIL report the
two-extractor *teacher*'s accuracy as FOSTER's (FOSTER issue #6), and so do the JIOC tables: that is the
headline accuracy by default (``--foster-eval teacher``); ``--foster-eval student`` reports the deployed
single-extractor student instead. With ``--foster-record-both`` (default) each phase record also holds
``foster_teacher_acc`` and ``foster_student_acc`` (the test set is read once more for that). The training,
the exemplar memory (herding on the student's features — the official code herds on the teacher's) and the
next phase do not depend on the choice.

Not implemented: AutoAugment + Cutout of the official repository (PyCIL's level, as JIOC), the optional
weight aligning of teacher or student (off by default officially), ``oofc="az"``, per-phase lists of β1.

FOSTER + JIOC (``foster-jioc``), boosting: ``L_IC(z ⊘ w) + CE(z_fe, y) + γ1·L_OC(z, z_old) + γ2·L_sup(z ⊘ w)``
— ``L_IC`` replaces the logits-aligned CE (δ from ``softmax(z ⊘ w)``), ``L_OC`` (one softmax per old task)
replaces the joint KD; the feature-enhancement term, the compression stage and the evaluation are unchanged.
``--jioc ic|oc|none`` give the ablations (``none`` = FOSTER).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from cil_losses import expansion as E
from cil_models import IncrementalNet

from ..options import boolean, choice, number, option
from ..stages import scale_lr_steps
from .base import Batch, KDOptions, Method
from .expansion_common import classification_term, distillation_terms, draw_rows_, head_on, phase_generator
from .icarl import JIOCOptions, jioc_ignored_options
from .registry import register

COMPRESSION_SHARE = 130 / 170  # official budgets: 170 boosting epochs, 130 compression epochs
#: what the official code and PyCIL count each new class as on CIFAR-100 (``samples_new_class``); on other data
#: sets their count is a sum of sample indices, which saturates the effective number the same way
OFFICIAL_NEW_CLASS_COUNT = 500.0


def _foster_fields() -> dict[str, Any]:
    return {
        "foster_beta1": option("β1 of the effective-number weights of boosting's logits alignment",
                               number(0.0, 1.0), 0.96),
        "foster_beta2": option("β2 of the effective-number weights of compression's balanced KD",
                               number(0.0, 1.0), 0.97),
        "foster_counts": option(
            "the class counts n_c of both effective-number weightings: true (every class's images in the phase; "
            "old classes: their exemplars) or official (each new class counted as 500 images, as the official "
            "code and PyCIL do on CIFAR-100 whatever its true count, which JIOC's FOSTER rows ran with; old "
            "classes: their exemplars)", choice("true", "official"), "true"),
        "foster_compression_epochs": option("epochs of the compression stage (default: the main stage's × 130/170)",
                                            number(1, optional=True, integer=True)),
        "foster_compression_lr": option("learning rate of the compression stage (default: the main stage's)",
                                        number(0.0, lo_open=True, optional=True)),
        "foster_eval": option("the network whose accuracy is reported: teacher (two extractors, as the official "
                              "code, PyCIL and JIOC) or student (the compressed one)", choice("teacher", "student"),
                              "teacher"),
        "foster_record_both": option("record the teacher's and the student's accuracy in every phase record",
                                     boolean, True),
    }


#: FOSTER's options (and the distillation temperature); FOSTER + JIOC has them and JIOC's (icarl-jioc's flags)
FOSTEROptions = attrs.make_class("FOSTEROptions", _foster_fields(), bases=(KDOptions,), frozen=True, kw_only=True)
FOSTERJIOCOptions = attrs.make_class("FOSTERJIOCOptions", _foster_fields(), bases=(JIOCOptions,), frozen=True,
                                     kw_only=True)


@register
class FOSTER(Method):
    name = "foster"
    summary = "boosting (frozen old + new extractor, logits alignment, KD) then compression to one extractor " \
              "with balanced KD (Wang et al. 2022)"
    memory = "optional"
    position = 140
    evaluation = ("cnn",)
    Options = FOSTEROptions
    incremental_only = ("kd_temperature", "foster_beta1", "foster_beta2", "foster_counts", "foster_compression_epochs",
                        "foster_compression_lr", "foster_eval", "foster_record_both")

    def __init__(self, run: Any) -> None:
        super().__init__(run)
        self._old_head: tuple[torch.Tensor, torch.Tensor] | None = None
        self._weights: dict[str, torch.Tensor] = {}
        self._test_scenario: Any = None

    def make_teacher(self, model: IncrementalNet) -> None:
        """No teacher at the phase's start: boosting's old logits come from the frozen extractor's columns; the
        compression stage's teacher is the boosted network."""
        return None

    def grow_network(self, ctx) -> IncrementalNet:
        model = ctx.model
        if ctx.t == 0:
            model.expand(ctx.num_new)
            return model
        if model.num_extractors != 1:
            raise RuntimeError(f"FOSTER expects one extractor at the start of phase {ctx.t + 1}, the network has "
                               f"{model.num_extractors}")
        head = model.head
        self._old_head = (head.full_weight().detach().clone(), head.full_bias().detach().clone())
        model.add_extractor(init="copy", new_columns="random")
        model.freeze_extractors([0])
        model.expand(ctx.num_new)
        model.set_aux_head(ctx.num_seen)
        return model

    def start_phase(self, ctx) -> None:
        o = self.options
        counts = ctx.class_counts
        if o.foster_counts == "official":
            counts = counts.clone()
            counts[ctx.num_old:] = OFFICIAL_NEW_CLASS_COUNT
        self._weights = {"boost": E.effective_number_weights(counts, o.foster_beta1).float(),
                         "compress": E.effective_number_weights(counts, o.foster_beta2).float()}

    # -- stages -----------------------------------------------------------------------------------
    def stages(self, ctx):
        main = self.main_stage(ctx)
        if ctx.t == 0:
            return [main]
        o = self.options
        epochs = o.foster_compression_epochs or max(1, round(main.epochs * COMPRESSION_SHARE))
        steps = scale_lr_steps(main.lr_steps, main.epochs, epochs) if main.lr_steps and main.epochs else ()
        compression = self.main_stage(
            ctx, name="compression", epochs=epochs, lr=o.foster_compression_lr or main.lr, lr_steps=steps,
            weight_decay=0.0, parameters=lambda model: self._enter_compression(ctx, model), loss=self.compression_loss)
        return [replace(main, name="boosting"), compression]

    def _enter_compression(self, ctx, model: IncrementalNet) -> list[torch.nn.Parameter]:
        """The start of compression: the boosted network becomes the (frozen) teacher and the network is turned
        into the student in place. A run resumed inside compression has the student already (one extractor)
        and the teacher back from the checkpoint."""
        if model.num_extractors == 2:
            ctx.teacher = model.frozen_copy()
            model.remove_aux_head()
            model.keep_only_extractor(0)
            model.unfreeze_extractors([0])
            weight, bias = self._old_head
            gen = phase_generator(self.run, ctx.t, 21)
            with torch.no_grad():
                blocks = list(model.head.blocks)
                for block, part in zip(blocks[:-1], model.head.task_slices[:-1]):
                    block.weight.copy_(weight[part])
                    block.bias.copy_(bias[part])
                draw_rows_(blocks[-1].weight, gen)
                blocks[-1].bias.zero_()
        elif ctx.teacher is None or ctx.teacher.num_extractors != 2:
            raise RuntimeError("FOSTER's compression stage needs the boosted network as its teacher")
        return list(model.parameters())

    # -- losses -------------------------------------------------------------------------------------
    def loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        model = ctx.model
        logits, feats = ctx.net(batch.x, return_features=True)
        z = logits.float()
        if ctx.t == 0:
            cls, key = classification_term(self.options, z, batch.y)
            return cls, {key: cls.detach()}
        w = self._weights["boost"].to(z.device)
        aligned = z / w
        cls, key = classification_term(self.options, aligned, batch.y)
        fe = F.cross_entropy(model.aux_logits(feats).float(), batch.y)
        self._old_head = weight, bias = head_on(self._old_head, z.device)
        old_feats = feats[:, model.extractor_slices[0]].detach().float()
        old_logits = F.linear(old_feats, weight, bias)
        dist, parts = distillation_terms(self.options, ctx, z, aligned, old_logits, batch.is_memory, kd_if_no_oc=True)
        key = "la" if key == "ce" else key
        return cls + fe + dist, {key: cls.detach(), "fe": fe.detach(), **parts}

    def compression_loss(self, ctx, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        with torch.no_grad():
            teacher = ctx.frozen_teacher()(batch.x).float()
        student = ctx.net(batch.x).float()
        loss = E.balanced_kd(student, teacher, self._weights["compress"].to(student.device),
                             self.options.kd_temperature, check_weights=False)  # > 0 and finite by construction
        return loss, {"bkd": loss.detach()}

    # -- end of the phase ---------------------------------------------------------------------------------
    def end_phase(self, ctx) -> dict[str, float]:
        student = ctx.model
        figures: dict[str, float] = {"parameters": float(student.parameter_count()["total"])}
        if ctx.t == 0:
            return figures
        teacher = ctx.teacher
        figures["teacher_parameters"] = float(teacher.parameter_count()["total"])
        if self.options.foster_record_both:
            figures["foster_teacher_acc"] = self._test_accuracy(ctx, teacher)
            figures["foster_student_acc"] = self._test_accuracy(ctx, student)
        if self.options.foster_eval == "teacher":
            # the loop evaluates ctx.model; the student stays the network of the run (memory, checkpoint, next phase)
            ctx.model = teacher
        return figures

    def _test_accuracy(self, ctx, model: IncrementalNet) -> float:
        from ..data import build_scenario, load_dataset
        from ..evaluation import evaluate_phase

        if self._test_scenario is None:
            self._test_scenario = build_scenario(self.run, load_dataset(self.run))
        rec, _, _ = evaluate_phase(model, self._test_scenario, ctx.t, ctx.extract, (), None)
        return float(rec["acc"])

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._old_head is None:
            return {}
        return {"old_weight": self._old_head[0], "old_bias": self._old_head[1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "old_weight" in state:
            self._old_head = (state["old_weight"], state["old_bias"])


@register
class FOSTERJIOC(FOSTER):
    name = "foster-jioc"
    summary = "FOSTER with joint input/output coordination in boosting; --jioc both|ic|oc|none (IJCAI 2024)"
    memory = "required"
    position = 141
    Options = FOSTERJIOCOptions
    incremental_only = FOSTER.incremental_only + ("jioc_gamma1", "jioc_gamma2", "jioc_squared")

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        return jioc_ignored_options(options, distils_without_oc=True)
