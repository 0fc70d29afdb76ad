"""Meta BalancedS-CE (Jodelet et al. ICANN 2021, CVIU 2022; METHODS.md §1).

The old-class weight α of BalancedS-CE is learned. Each phase starts with α = 1 and holds out a small
class-balanced validation set B_t (10 % of the per-class memory budget for every seen class, e.g.
2 samples with 20 exemplars per class). Every ``k`` steps (``--meta-interval``, default 10):

1. ``θ* = θ − lr·∇_θ L_bal(θ; X, Y, α)``: one differentiable SGD look-ahead on the current batch with the
   full balanced loss (BalancedS-CE + distillation), via ``torch.func.functional_call``;
2. ``α ← α − lr_α·∇_α CE(f(θ*; X̄), Ȳ)`` on a batch of B_t (plain softmax CE), then α is clamped to
   [1e-3, 1] (*open* in the paper; the METHODS.md default);
3. the normal update of θ uses the new α.

Step 2 is Algorithm 1's unit step by default (``--meta-lr 1``): the meta-gradient is small (median
|∇_α| ≈ 2e-4 on glyphs100), so a smaller step leaves α at its clamp for a whole short phase.
``--meta-optimizer adam`` replaces it with Adam on the scalar α (``--meta-adam-lr``, default 0.01),
which moves α at a rate that does not depend on the gradient's scale (for short budgets). Its moments
restart with α = 1 at each phase and are checkpointed. α at the end of each phase is in the metrics.

``--meta-scope classifier`` restricts the look-ahead to the classifier on detached features (much
cheaper); the default ``network`` follows the paper. Batch-norm statistics are not changed by the
look-ahead (it runs on copies of the buffers).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

import cil_losses as L

import attrs

from ..config import memory_budget
from ..options import choice, number, option
from .base import Batch
from .il_baseline import BalancedSoftmax, BSCEOptions
from .registry import register

ALPHA_RANGE = (1e-3, 1.0)
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@attrs.frozen(kw_only=True)
class MetaOptions(BSCEOptions):
    meta_interval: int = option("update α every k steps", number(1, integer=True), 10)
    meta_lr: float = option("step size of α's plain gradient step (Algorithm 1: a unit step)",
                            number(0.0, lo_open=True), 1.0)
    meta_optimizer: str = option("how α is updated from its meta-gradient: Algorithm 1's plain step, or Adam",
                                 choice("sgd", "adam"), "sgd")
    meta_adam_lr: float = option("learning rate of α with --meta-optimizer adam", number(0.0, lo_open=True), 0.01)
    meta_scope: str = option("look-ahead over the whole network or the classifier only",
                             choice("network", "classifier"), "network")


@register
class MetaBalancedSoftmax(BalancedSoftmax):
    name = "bsce-meta"
    eager_only = ("its meta-gradient differentiates through a training step (create_graph=True), which compiled "
                  "backward graphs do not support")
    no_fp16 = ("its meta-gradient (a second-order backward, |∇α| ≈ 2e-4) runs outside the loss scaling, where "
               "float16 underflows or overflows")
    summary = "BalancedS-CE whose old-class weight α is meta-learned on a balanced validation split (Jodelet et al.)"
    memory = "required"
    position = 40
    Options = MetaOptions

    @classmethod
    def ignored_options(cls, options) -> dict[str, str]:
        if options.meta_optimizer == "sgd":
            return {"meta_adam_lr": "it sets Adam's learning rate, and --meta-optimizer is sgd"}
        return {"meta_lr": f"it is the plain step's size, and --meta-optimizer is {options.meta_optimizer}"}

    def __init__(self, run) -> None:
        super().__init__(run)
        self._alpha = 1.0
        self._adam = (0.0, 0.0, 0)  # first and second moment of ∇_α and the number of Adam steps
        self._path = 0.0  # Σ|Δα| over the phase's updates (how far α travelled, clamping included)
        self._lowest = 1.0
        self._val_x = self._val_y = None

    def alpha(self, ctx) -> float:
        return self._alpha

    def start_phase(self, ctx) -> None:
        self._alpha = 1.0
        self._adam = (0.0, 0.0, 0)
        self._path, self._lowest = 0.0, 1.0
        val = ctx.data.val.to(ctx.device)
        self._val_x, self._val_y = ctx.data.x[val], ctx.data.y[val]

    def held_out_per_class(self, phase) -> int:
        """B_t: 10 % of the per-class memory share of every seen class (2 with 20 exemplars per class)."""
        return 0 if phase.index == 0 else memory_budget(self.run).held_out_per_class(phase.num_seen, 0.1)

    # -- the balanced loss as a function of (logits, α), shared by the look-ahead and the update
    def _balanced(self, ctx, logits, y, teacher, alpha) -> torch.Tensor:
        l_c = L.balanced_softmax_cross_entropy(logits, y, ctx.class_counts, num_old=ctx.num_old, alpha=alpha,
                                                 check_targets=False)
        if ctx.num_old == 0:
            return l_c
        l_d = L.kd_loss(logits[:, : ctx.num_old], teacher, self.options.kd_temperature, t_squared=True)
        rho = ctx.num_old / ctx.num_seen
        return rho * l_d + (1.0 - rho) * l_c

    def _meta_update(self, ctx, batch: Batch, teacher: torch.Tensor) -> None:
        """One update of α (Algorithm 1): a look-ahead step on ``batch`` at the current α, then α moves against
        the gradient of the look-ahead network's cross-entropy on a balanced validation batch. ``teacher``: the
        previous network's logits of ``batch``, the same the training step's loss uses (forwarded once)."""
        val_x, val_y = self._val_x, self._val_y
        if val_x is None or len(val_y) == 0:
            return
        pick = torch.randperm(len(val_y), generator=ctx.generator)[: self.run.batch_size].to(val_y.device)
        xv = ctx.normalize(val_x[pick])
        yv = val_y[pick]
        model = ctx.model
        alpha = torch.tensor(self._alpha, dtype=torch.float32, device=ctx.device, requires_grad=True)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        lr = ctx.current_lr()
        if self.options.meta_scope == "classifier":
            head = model.head
            with torch.no_grad():
                feats, feats_v = model.features(batch.x).float(), model.features(xv).float()
            params = {n: p for n, p in head.named_parameters() if p.requires_grad}
            loss = self._balanced(ctx, functional_call(head, params, (feats,)).float(), batch.y, teacher, alpha)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
            fast = {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}
            val_logits = functional_call(head, fast, (feats_v,)).float()
        else:
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            logits = functional_call(model, (params, buffers), (batch.x,)).float()
            loss = self._balanced(ctx, logits, batch.y, teacher, alpha)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
            fast = {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}
            val_logits = functional_call(model, (fast, buffers), (xv,)).float()
        val_loss = F.cross_entropy(val_logits, yv)
        (g_alpha,) = torch.autograd.grad(val_loss, alpha)
        before = self._alpha
        self._alpha = min(max(before - self._alpha_step(float(g_alpha)), ALPHA_RANGE[0]), ALPHA_RANGE[1])
        self._path += abs(self._alpha - before)
        self._lowest = min(self._lowest, self._alpha)

    def _alpha_step(self, grad: float) -> float:
        """The decrement of α: ``lr_α·g`` (Algorithm 1), or Adam's bias-corrected ``lr·m̂/(√v̂ + ε)``."""
        if self.options.meta_optimizer == "sgd":
            return self.options.meta_lr * grad
        (b1, b2), (m, v, t) = ADAM_BETAS, self._adam
        m, v, t = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad, t + 1
        self._adam = (m, v, t)
        return self.options.meta_adam_lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)) ** 0.5 + ADAM_EPS)

    def loss(self, ctx, batch: Batch):
        teacher = ctx.teacher_logits(batch.x).float() if ctx.num_old else None
        if ctx.num_old > 0 and ctx.step % self.options.meta_interval == 0:
            self._meta_update(ctx, batch, teacher)
        logits = ctx.net(batch.x).float()
        loss = self._balanced(ctx, logits, batch.y, teacher, self._alpha)
        return loss, {"alpha": self._alpha}

    def end_phase(self, ctx) -> dict[str, float]:
        return {"alpha": self._alpha, "alpha_min": self._lowest, "alpha_path": self._path}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self._alpha, "adam": list(self._adam), "path": self._path, "lowest": self._lowest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._alpha = float(state["alpha"])
        m, v, t = state.get("adam", (0.0, 0.0, 0))  # checkpoints of before the Adam option
        self._adam = (float(m), float(v), int(t))
        self._path, self._lowest = float(state.get("path", 0.0)), float(state.get("lowest", self._alpha))
