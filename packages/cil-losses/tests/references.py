"""Plain, obviously correct reference implementations used by the tests and by tools/bench_losses.py.

Written independently of cil_losses: Python loops over slices, samples and rows, textbook formulas,
autograd for every gradient. Slow on purpose. Imports torch and the standard library only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- softmax over slices
def log_softmax_per_slice(z: torch.Tensor, boundaries) -> torch.Tensor:
    pieces = []
    for a, b in zip(boundaries, boundaries[1:]):
        block = z[:, a:b]
        pieces.append(block - torch.logsumexp(block, dim=1, keepdim=True))
    return torch.cat(pieces, dim=1)


def soft_ce(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """KD_T(a, b) = -(1/B) Σ_i Σ_c softmax(b_i/T)_c log softmax(a_i/T)_c."""
    log_p = student / T - torch.logsumexp(student / T, dim=1, keepdim=True)
    q = torch.exp(teacher / T - torch.logsumexp(teacher / T, dim=1, keepdim=True))
    return -(q * log_p).sum() / student.shape[0]


def kl_div(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """(1/B) Σ_i KL(softmax(b_i/T) ‖ softmax(a_i/T))."""
    log_p = student / T - torch.logsumexp(student / T, dim=1, keepdim=True)
    log_q = teacher / T - torch.logsumexp(teacher / T, dim=1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum() / student.shape[0]


def task_wise_kd_loop(student, teacher, boundaries, T=2.0, t_squared=True):
    """SS-IL task-wise KD with a Python loop over task slices (the un-fused baseline)."""
    total = student.new_zeros(())
    for a, b in zip(boundaries, boundaries[1:]):
        total = total + kl_div(student[:, a:b], teacher[:, a:b], T)
    return total * (T * T if t_squared else 1.0)


def task_wise_kd_loop_fast(student, teacher, boundaries, T=2.0):
    """The loop a user would write with torch's fused primitives (used as the benchmark baseline)."""
    total = 0.0
    for a, b in zip(boundaries, boundaries[1:]):
        total = total + F.kl_div(F.log_softmax(student[:, a:b] / T, dim=1), F.log_softmax(teacher[:, a:b] / T, dim=1),
                                 reduction="batchmean", log_target=True)
    return total * T * T


def output_coordination_loop(student, teacher, boundaries, T=2.0):
    total = student.new_zeros(())
    for a, b in zip(boundaries, boundaries[1:]):
        total = total + soft_ce(student[:, a:b], teacher[:, a:b], T)
    return total


# --------------------------------------------------------------------------- balanced softmax
def balanced_softmax_ce(z, y, counts, num_old=0, alpha=1.0, eps=None, floor=0.0):
    """-log( λ_y e^{z_y} / Σ_j λ_j e^{z_j} ), λ_c = ε or α·n_c (old), n_c (new); written per sample and class.
    A class with λ = 0 adds 0 to the sum (``floor`` > 0: λ floored there, the pre-1.0 behaviour)."""
    losses = []
    for i in range(z.shape[0]):
        shift = z[i].max().detach()
        terms = []
        for c in range(z.shape[1]):
            if c < num_old:
                lam = eps if eps is not None else alpha * float(counts[c])
            else:
                lam = float(counts[c])
            lam = torch.as_tensor(lam, dtype=z.dtype).clamp_min(floor)
            terms.append(lam * torch.exp(z[i, c] - shift))
        terms = torch.stack(terms)
        losses.append(-torch.log(terms[int(y[i])] / terms.sum()))
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- SS-IL
def separated_ce(z, y, num_old, is_replay):
    total = z.new_zeros(())
    for i in range(z.shape[0]):
        if num_old == 0:
            lo, hi = 0, z.shape[1]
        elif bool(is_replay[i]):
            lo, hi = 0, num_old
        else:
            lo, hi = num_old, z.shape[1]
        row = z[i, lo:hi]
        total = total - (row[int(y[i]) - lo] - torch.logsumexp(row, dim=0))
    return total / z.shape[0]


# --------------------------------------------------------------------------- JIOC
def input_coordination(z, y, detach=True, normalize=False):
    p = torch.softmax(z, dim=1)
    p_y = p[torch.arange(z.shape[0]), y]
    delta = (p_y - 1).abs()
    if detach:
        delta = delta.detach()
    if normalize:
        delta = delta / delta.mean()
    return (delta * -torch.log(p_y)).mean()


def suppression(z, is_memory, num_old, squared=False):
    p = torch.softmax(z, dim=1)
    total, count = p.sum() * 0.0, 0
    for i in range(z.shape[0]):
        if bool(is_memory[i]):
            new = p[i, num_old:]
            total = total + ((new * new).sum() if squared else new.sum())
            count += 1
    return total / max(count, 1)


# --------------------------------------------------------------------------- DGR / DAKD
def dakd(student, teacher, lost, T=2.0):
    """DAKD following the order of the authors' code: p_final = H·logsm(z/T) + (1−H)·logsm(z̃/T)."""
    lost = [float(v) for v in lost]
    shifted = [v + 0.001 for v in lost]
    total = sum(shifted)
    entropy = -sum((v / total) * math.log(v / total) for v in shifted)
    n = len(lost)
    H = entropy / math.log(n) if n > 1 else 1.0
    norm = math.sqrt(sum(v * v for v in lost))
    if norm == 0:
        v_vec, H = [0.0] * n, 1.0
    else:
        v_vec = [v / norm for v in lost]
    v_t = torch.tensor(v_vec, dtype=student.dtype)
    adjusted = student * v_t + teacher * (1 - v_t)
    log_plain = torch.log_softmax(student / T, dim=1)
    log_adj = torch.log_softmax(adjusted / T, dim=1)
    q = torch.softmax(teacher / T, dim=1)
    return -(q * (H * log_plain + (1 - H) * log_adj)).sum() / student.shape[0]


def class_weights(phi, num_old, gamma, decoupled=True, class_balance=True, task_balance=True):
    """w_c = α_c · r_group(c) with Python loops (guards: min over Φ>0, α=1 for Φ=0, ρ=inf if mean_old=0)."""
    C = len(phi)
    groups = [range(C)] if (num_old == 0 or not decoupled) else [range(num_old), range(num_old, C)]
    alpha = [1.0] * C
    if class_balance:
        for group in groups:
            positive = [phi[j] for j in group if phi[j] > 0]
            low = min(positive) if positive else math.inf
            for c in group:
                alpha[c] = low / phi[c] if phi[c] > 0 else 1.0
    if num_old == 0 or not task_balance:
        return alpha
    mean_old = sum(phi[:num_old]) / num_old
    mean_new = sum(phi[num_old:]) / (C - num_old)
    rho = mean_new / mean_old if mean_old > 0 else math.inf
    r_old, r_new = min(1.0, rho), min(1.0, rho * gamma)
    return [alpha[c] * (r_old if c < num_old else r_new) for c in range(C)]


def reference_dgr_step(features, weight_blocks, bias_blocks, loss_fn, *, phi, num_old, gamma,
                       decoupled=True, class_balance=True, task_balance=True, loss_balance=True):
    """The per-row reference procedure of DGR (METHODS.md §4), in the authors' order.

    ``z = features @ cat(W).T + cat(b)``; ``loss_ce, loss_kd = loss_fn(z)`` (``loss_kd`` None in phase 0);
    CE (and KD) row gradients by separate ``autograd.grad`` calls; ``(loss_ce + loss_kd).backward()``;
    then :func:`reference_dgr_rewrite` overwrites every FC row's and bias entry's ``.grad``.

    ``phi`` is a list of floats updated in place. Returns ``(weights, beta)``.
    """
    weight = torch.cat(weight_blocks)
    bias = torch.cat(bias_blocks)
    z = F.linear(features, weight, bias)
    loss_ce, loss_kd = loss_fn(z)
    ce_w = torch.autograd.grad(loss_ce, weight_blocks, retain_graph=True)
    ce_b = torch.autograd.grad(loss_ce, bias_blocks, retain_graph=True)
    kd_w = kd_b = None
    if num_old > 0 and loss_kd is not None:
        kd_w = torch.autograd.grad(loss_kd, weight_blocks, retain_graph=True, allow_unused=True)
        kd_b = torch.autograd.grad(loss_kd, bias_blocks, retain_graph=True, allow_unused=True)
        kd_w = [torch.zeros_like(w) if g is None else g for w, g in zip(weight_blocks, kd_w)]
        kd_b = [torch.zeros_like(b) if g is None else g for b, g in zip(bias_blocks, kd_b)]
        total = loss_ce + loss_kd
    else:
        total = loss_ce
    total.backward()
    return reference_dgr_rewrite(weight_blocks, bias_blocks, ce_w, ce_b, kd_w, kd_b, phi=phi, num_old=num_old,
                                 gamma=gamma, decoupled=decoupled, class_balance=class_balance,
                                 task_balance=task_balance, loss_balance=loss_balance)


def reference_dgr_rewrite(weight_blocks, bias_blocks, ce_w, ce_b, kd_w, kd_b, *, phi, num_old, gamma,
                          decoupled=True, class_balance=True, task_balance=True, loss_balance=True):
    """Given per-block CE (and KD, or None) gradients: ``Φ += g``, the ratios with Python loops, then
    every row's ``.grad`` (which must exist) is overwritten, one row at a time. Returns ``(weights, beta)``."""
    ce_rows = [row for block in ce_w for row in block]
    ce_bias = [v for block in ce_b for v in block]
    ce_norms = [float(torch.linalg.vector_norm(row.double())) for row in ce_rows]
    for c in range(len(phi)):
        phi[c] += ce_norms[c]
    weights = class_weights(phi, num_old, gamma, decoupled, class_balance, task_balance)
    beta = None
    if kd_w is not None:
        kd_rows = [row for block in kd_w for row in block]
        kd_bias = [v for block in kd_b for v in block]
        kd_norms = [float(torch.linalg.vector_norm(kd_rows[c].double())) for c in range(num_old)]
        num = math.sqrt(sum((weights[c] * ce_norms[c]) ** 2 for c in range(len(phi))))
        den = math.sqrt(sum(v * v for v in kd_norms))
        beta = (num / den if den > 0 else 1.0) if loss_balance else 1.0
    c = 0
    for w_block, b_block in zip(weight_blocks, bias_blocks):
        for j in range(w_block.shape[0]):
            new_row = weights[c] * ce_rows[c]
            new_bias = weights[c] * ce_bias[c]
            if beta is not None and c < num_old:
                new_row = new_row + beta * kd_rows[c]
                new_bias = new_bias + beta * kd_bias[c]
            w_block.grad[j, :] = new_row
            b_block.grad[j] = new_bias
            c += 1
    return weights, beta
