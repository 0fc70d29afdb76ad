"""Meta BalancedS-CE (Jodelet et al. ICANN 2021, CVIU 2022; METHODS.md §1).

The old-class weight α of BalancedS-CE is learned. Each phase starts with α = 1 and holds out a small
class-balanced validation set B_t (10 % of the per-class memory budget for every seen class, e.g.
2 samples with 20 exemplars per class). Every ``k`` steps (``--meta-interval``, default 10):

1. ``θ* = θ − lr·∇_θ L_bal(θ; X, Y, α)``: one differentiable SGD look-ahead on the current batch with the
   full balanced loss (BalancedS-CE + distillation), via ``torch.func.functional_call``;
2. ``α ← α − lr_α·∇_α CE(f(θ*; X̄), Ȳ)`` on a batch of B_t (plain softmax CE), then α is clamped to
   [1e-3, 1] (*open* in the paper; the METHODS.md default);
3. the normal update of θ uses the new α.

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

from .base import Batch, register
from .il_baseline import BalancedSoftmax

ALPHA_RANGE = (1e-3, 1.0)


@register
class MetaBalancedSoftmax(BalancedSoftmax):
    name = "bsce-meta"
    summary = "BalancedS-CE whose old-class weight α is meta-learned on a balanced validation split (Jodelet et al.)"
    memory = "required"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._alpha = 1.0

    def alpha(self, ctx) -> float:
        return self._alpha

    def start_phase(self, ctx) -> None:
        self._alpha = 1.0

    def validation_per_class(self, ctx) -> int:
        if ctx.t == 0:
            return 0
        budget = self.cfg.memory_per_class if self.cfg.memory_total is None else self.cfg.memory_total / ctx.num_seen
        return max(1, int(round(0.1 * float(budget or 0))))

    # -- the balanced loss as a function of (logits, α), shared by the look-ahead and the update
    def _balanced(self, ctx, logits, y, teacher, alpha) -> torch.Tensor:
        l_c = L.balanced_softmax_cross_entropy(logits, y, ctx.class_counts, num_old=ctx.num_old, alpha=alpha)
        if ctx.num_old == 0:
            return l_c
        l_d = L.kd_loss(logits[:, : ctx.num_old], teacher, self.cfg.kd_temperature, t_squared=True)
        rho = ctx.num_old / ctx.num_seen
        return rho * l_d + (1.0 - rho) * l_c

    def _meta_update(self, ctx, batch: Batch) -> None:
        val_x, val_y = ctx.extra.get("val_images"), ctx.extra.get("val_labels")
        if val_x is None or len(val_y) == 0:
            return
        gen = ctx.extra["generator"]
        pick = torch.randperm(len(val_y), generator=gen)[: self.cfg.batch_size].to(val_y.device)
        xv = ctx.extra["normalize"](val_x[pick])
        yv = val_y[pick]
        model = ctx.model
        alpha = torch.tensor(self._alpha, dtype=torch.float32, device=ctx.device, requires_grad=True)
        teacher = ctx.teacher_logits(batch.x).float()
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        lr = ctx.current_lr()
        if self.cfg.meta_scope == "classifier":
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
        new_alpha = float(alpha.detach() - self.cfg.meta_lr * g_alpha)
        self._alpha = min(max(new_alpha, ALPHA_RANGE[0]), ALPHA_RANGE[1])

    def loss(self, ctx, batch: Batch):
        if ctx.num_old > 0 and ctx.step % self.cfg.meta_interval == 0:
            self._meta_update(ctx, batch)
        logits = ctx.net(batch.x).float()
        teacher = ctx.teacher_logits(batch.x).float() if ctx.num_old else None
        loss = self._balanced(ctx, logits, batch.y, teacher, self._alpha)
        return loss, {"alpha": self._alpha}

    def end_phase(self, ctx) -> dict[str, float]:
        return {"alpha": self._alpha}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self._alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._alpha = float(state["alpha"])
