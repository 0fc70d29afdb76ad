"""GR / DGR with distribution-aware KD (He, CVPR 2024; METHODS.md §4).

``L = L_CE + λ_KD·T²·L_DAKD`` with ``L_CE = CE(z + o, y)`` (regularised softmax, offsets
``o_c = log(n_c / Σ n)`` or from the accumulated gradients), ``λ_KD = 0.7·sqrt(N_seen / N_new)``,
``T = 2``. The classifier's gradients are reweighted per class (class balance α_c, task balance with
attenuation, loss balance β between CE and KD) by ``cil_losses.GradientReweighter``; the backbone gets
the ordinary gradient. Ablation switches: ``--no-dgr-dakd`` (plain KD), ``--no-dgr-decouple``
(GR: one class-balance group over all classes), ``--no-dgr-regularized-softmax`` (plain CE). Each phase
records its λ_KD (``phases[*].kd_weight``); ``--dgr-kd-weight-max`` caps it (a probe, not the paper's).
Each phase also records the task-balance ratios ``r_old = min(1, ρ)``, ``r_new = min(1, ρ·γ)`` that the
paper's rule gives from the phase's final ``Φ`` (``phases[*].task_balance_r_old`` / ``_r_new``) and whether
the task balance was applied (``phases[*].task_balance``): ``--dgr-task-balance`` applies it in every
phase (``always``, the paper), in none (``never``: ``r = 1``), or only while a phase's new images outnumber
the exemplar memory (``while-new-exceeds-memory``, a probe for streams whose later phases are small).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import cil_losses as L

import attrs

from ..options import boolean, choice, number, option
from .base import Batch, KDOptions, Method
from .registry import register


@attrs.frozen(kw_only=True)
class DGROptions(KDOptions):
    dgr_dakd: bool = option("distribution-aware KD (false: plain KD)", boolean, True)
    dgr_decouple: bool = option("decoupled class balance (false: GR, one group over all classes)", boolean, True)
    dgr_regularized_softmax: bool = option("regularised softmax (false: plain CE)", boolean, True)
    dgr_offsets: str = option("regularised-softmax offsets from class counts or accumulated gradients",
                              choice("log_prior", "grad"), "log_prior")
    dgr_eta: float = option("attenuation strength η of the task-balance ratio", number(0.0), 1.0)
    dgr_task_balance: str = option(
        "when the task-balance ratio (r_old = min(1, ρ), r_new = min(1, ρ·γ)) reweights the classifier: every "
        "phase (the paper), never (r = 1), or only in phases whose new images outnumber the exemplar memory "
        "(a probe)", choice("always", "never", "while-new-exceeds-memory"), "always")
    dgr_kd_weight_max: float | None = option(
        "cap on the KD weight λ_KD = 0.7·sqrt(N_seen/N_new) (not in the paper: a probe for streams whose later "
        "phases are small, where λ_KD grows large)", number(0.0, lo_open=True, optional=True), None)


@register
class DGR(Method):
    name = "dgr"
    summary = "decoupled gradient reweighting of the classifier + distribution-aware KD (He, CVPR 2024)"
    memory = "optional"
    position = 110
    Options = DGROptions
    incremental_only = ("kd_temperature", "dgr_dakd", "dgr_kd_weight_max", "dgr_task_balance", "dgr_eta")
    no_fp16 = ("its reweighting accumulates the norms of the classifier rows' gradients, which float16 loss scaling "
               "multiplies by a scale that changes during training (and can overflow)")

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        ignored = {}
        if not options.dgr_regularized_softmax:
            ignored["dgr_offsets"] = "the regularised softmax is off (--no-dgr-regularized-softmax)"
        if options.dgr_task_balance == "never":
            ignored["dgr_eta"] = "η attenuates the task-balance ratio, which --dgr-task-balance never turns off"
        return ignored

    def __init__(self, run) -> None:
        super().__init__(run)
        self.reweighter = L.GradientReweighter(decoupled=self.options.dgr_decouple, eta=self.options.dgr_eta)

    def start_phase(self, ctx) -> None:
        rule = self.options.dgr_task_balance
        memory = int(ctx.memory_counts.sum()) if ctx.num_old else 0
        self.reweighter.task_balance = rule == "always" or (rule == "while-new-exceeds-memory" and ctx.n_new > memory)
        self.reweighter.start_phase(
            num_classes=ctx.num_seen, num_old=ctx.num_old, n_seen=ctx.n_seen, n_new=ctx.n_new
        )
        self.reweighter.to(ctx.device)
        if ctx.num_old:
            lost = (ctx.original_counts[: ctx.num_old] - ctx.memory_counts).clamp_min(0)
            self._lost = lost.float().to(ctx.device)
            self._kd_weight = L.dgr_kd_weight(ctx.n_seen, ctx.n_new)
            if self.options.dgr_kd_weight_max is not None:
                self._kd_weight = min(self._kd_weight, self.options.dgr_kd_weight_max)

    def end_phase(self, ctx) -> dict[str, float]:
        if not ctx.num_old:
            return {}
        record = {"kd_weight": self._kd_weight, "task_balance": float(self.reweighter.task_balance)}
        phi = self.reweighter.phi.double()
        old, new = phi[: ctx.num_old].mean().item(), phi[ctx.num_old:].mean().item()
        if old > 0:                                 # the paper's ratios at the phase's end, applied or not
            rho = new / old
            record["task_balance_r_old"] = min(1.0, rho)
            record["task_balance_r_new"] = min(1.0, rho * self.reweighter.gamma)
        return record

    def _offsets(self, ctx) -> torch.Tensor | None:
        if not self.options.dgr_regularized_softmax:
            return None
        if self.options.dgr_offsets == "grad":
            return self.reweighter.log_prior_offsets()
        counts = ctx.class_counts.float()
        return torch.log(counts.clamp_min(1e-12) / counts.sum())

    def loss(self, ctx, batch: Batch):
        model = ctx.model
        feats = ctx.net.features(batch.x) if hasattr(ctx.net, "features") else model.features(batch.x)
        head = model.head
        z_ce, z_kd = self.reweighter(feats, head.full_weight(), head.full_bias())
        offsets = self._offsets(ctx)
        z_ce = z_ce.float()
        if offsets is None:
            ce = F.cross_entropy(z_ce, batch.y)
        else:  # the labels were checked when the data was loaded: no per-step range check (a GPU sync)
            ce = L.logit_adjusted_cross_entropy(z_ce, batch.y, offsets, check_targets=False)
        if ctx.num_old == 0:
            return ce, {"ce": ce.detach()}
        T = self.options.kd_temperature
        student = z_kd.float()                     # [B, num_old]: the old classes' logits
        teacher = ctx.teacher_logits(batch.x).float()
        if self.options.dgr_dakd:
            kd = L.dakd_loss(student, teacher, self._lost, T)
        else:
            kd = L.kd_loss(student, teacher, T)
        kd = self._kd_weight * T * T * kd
        return ce + kd, {"ce": ce.detach(), "kd": kd.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"reweighter": self.reweighter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reweighter.load_state_dict(state["reweighter"])
