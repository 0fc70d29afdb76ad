"""Gradient reweighting of the classifier (GR / DGR, He CVPR 2024; METHODS.md §4): the stateful part.

:class:`GradientReweighter` is a classifier layer ``z = h·Wᵀ + b`` whose backward reweights the
gradients of the FC rows, vectorised (no loop over classes or tasks):

* the features ``h`` (the backbone) get the ordinary gradient of ``L_CE + L_KD``;
* FC row ``c`` and bias ``c`` get ``w_c·∇L_CE + β·∇L_KD`` for an old class, ``w_c·∇L_CE`` for a new one;
  phase 0: ``α_c·∇L_CE``;
* ``Φ_c += ‖∂L_CE/∂W_c‖₂`` (bias excluded) every step, before the ratios are computed (authors' order).

The layer returns the logits in two streams, ``(z_ce, z_kd)``: ``z_ce = h·Wᵀ + b`` (``[B, C]``) and
``z_kd = z_ce[:, :num_old]`` (``[B, C_old]``, a copy of the old columns); the caller builds ``L_CE`` from
``z_ce`` only and the weighted distillation ``λ_KD·T²·L_DAKD`` from ``z_kd`` only, adds them and calls
``backward()`` once. Because the two streams arrive separately in the backward, the row gradients
``G_CEᵀh`` and ``G_KDᵀh`` come from two matrix products and no second backward pass is needed; ``z_kd``
holds only the old columns, so no ``[B, C]`` zero-padded gradient is built for the KD stream.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _checks
from .dgr import dgr_attenuation_gamma, dgr_class_weights
from .errors import LossArgumentError, LossTypeError, PhaseStateError

__all__ = ["GradientReweighter", "reweighted_linear"]


def _backward(ctx, grad_ce: torch.Tensor | None, grad_kd: torch.Tensor | None):
    features, weight = ctx.saved_tensors
    module: GradientReweighter = ctx.module
    num_old = module.num_old
    dtype = _checks.compute_dtype(weight)
    if grad_ce is None:
        grad_ce = torch.zeros(features.shape[0], weight.shape[0], dtype=dtype, device=features.device)
    needs_features, needs_weight, needs_bias, _ = ctx.needs_input_grad
    if num_old == 0:
        grad_kd = None                                               # z_kd is [B, 0]
    grad_features = None
    if needs_features:
        if grad_kd is None:
            grad_logits = grad_ce
        else:                                                        # ∂(L_CE + L_KD)/∂z, [B, C]
            grad_logits = grad_ce.clone()
            grad_logits[:, :num_old].add_(grad_kd)                   # (`+=` on a slice would add a __setitem__)
        grad_features = grad_logits.mm(weight)
    ce_rows = grad_ce.t().mm(features).to(dtype)                     # ∂L_CE/∂W, [C, D]
    ce_bias = grad_ce.sum(dim=0).to(dtype)                           # ∂L_CE/∂b, [C]
    kd_rows = kd_bias = None
    if grad_kd is not None:
        kd_rows = grad_kd.t().mm(features).to(dtype)                 # ∂L_KD/∂W_old, [C_old, D]
        kd_bias = grad_kd.sum(dim=0).to(dtype)
    grad_weight, grad_bias = module._reweight(ce_rows, ce_bias, kd_rows, kd_bias, in_place=True)
    return (
        grad_features,
        grad_weight if needs_weight else None,
        grad_bias if ctx.has_bias and needs_bias else None,
        None,
    )


def _forward(ctx, features, weight, bias, module):
    logits = F.linear(features, weight, bias)
    ctx.save_for_backward(features, weight)
    ctx.module = module
    ctx.has_bias = bias is not None
    ctx.set_materialize_grads(False)
    return logits, logits[:, : module.num_old].clone()


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` without its graph (the layer's backward runs without one: no ``detach`` call there)."""
    return t.detach() if t is not None and t.requires_grad else t


_FUNCTIONS: dict[str, type[torch.autograd.Function]] = {}


def _function_for(device_type: str) -> type[torch.autograd.Function]:
    """The reweighted-linear Function for one device type, with ``torch.amp.custom_fwd/custom_bwd``
    bound to that device type (the backward runs under the forward's autocast state)."""
    fn = _FUNCTIONS.get(device_type)
    if fn is not None:
        return fn
    if torch.amp.is_autocast_available(device_type):
        fwd = torch.amp.custom_fwd(_forward, device_type=device_type)
        bwd = torch.amp.custom_bwd(once_differentiable(_backward), device_type=device_type)
    else:  # a device type without autocast (e.g. "meta"): nothing to carry over
        fwd, bwd = _forward, once_differentiable(_backward)
    fn = type(
        f"ReweightedLinear_{device_type}",
        (torch.autograd.Function,),
        {"forward": staticmethod(fwd), "backward": staticmethod(bwd), "__doc__": __doc__},
    )
    _FUNCTIONS[device_type] = fn
    return fn


class GradientReweighter(torch.nn.Module):
    """Accumulated-gradient tracker and reweighted classifier layer of GR / DGR (He, CVPR 2024).

    Per phase: ``start_phase(num_classes, num_old, n_seen, n_new)`` resets ``Φ ← 0``; each step
    ``z_ce, z_kd = reweighter(features, weight, bias)``; ``(L_CE(z_ce) + λ_KD·T²·L_DAKD(z_kd)).backward()``
    (``z_kd``: the old classes' logits only).

    The backward (METHODS.md §4, authors' order of operations):

    1. ``g_c = ‖∂L_CE/∂W_c‖₂`` for every class, ``Φ_c += g_c``;
    2. class balance ``α_c = min_{j∈G(c)} Φ_j / Φ_c`` (all classes in phase 0 or with
       ``decoupled=False``; old/new groups otherwise);
    3. task balance ``ρ = mean_new Φ / mean_old Φ``, ``r_old = min(1, ρ)``, ``r_new = min(1, ργ)``,
       ``γ = exp(−η·N_seen/(N_seen+N_new))``; ``w_c = α_c·r_{group(c)}``;
    4. loss balance ``β = ‖(w_c g_c)_c‖ / ‖(g_c^KD)_{c old}‖``;
    5. FC row/bias gradient ``w_c·∇L_CE + β·∇L_KD`` (old), ``w_c·∇L_CE`` (new); phase 0 ``α_c·∇L_CE``.
       The features get the ordinary gradient of ``L_CE + L_KD``.

    ``weight``/``bias`` may be any tensors, e.g. ``torch.cat`` of per-task parameter blocks; the
    gradients flow back through the concatenation. Weight decay added by the optimiser is not
    reweighted. Works under ``torch.autocast`` (the backward runs under the forward's autocast state).

    Notes:
        * ``Φ`` is updated in the backward: one ``backward()`` per optimisation step (as in the authors'
          code). Gradient accumulation over micro-batches reweights each micro-batch on its own.
        * On an accelerator everything stays on the device: no host synchronisation (on the CPU the
          ratios read four statistics of ``Φ`` as floats, ``host_ratios``). ``last_weights`` / ``last_beta``
          (tensors) expose the last step's ``w`` and ``β`` (``None`` in phase 0) for logging.
        * ``Φ`` is per process. Under DDP every rank reweights with its own ``Φ`` before the gradients
          are averaged; the ranks' ``Φ`` differ by sampling noise (synchronising ``g_c`` across ranks
          is not done here).
        * ``phi_dtype=torch.float32`` on devices without float64 (e.g. MPS).

    Example (one step of phase 1: 3 old classes, 2 new):
        >>> import torch, cil_losses as L
        >>> _ = torch.manual_seed(0)
        >>> head = torch.nn.Linear(8, 5)
        >>> reweighter = L.GradientReweighter()
        >>> reweighter.start_phase(num_classes=5, num_old=3, n_seen=1500, n_new=400)
        >>> features, y = torch.randn(4, 8), torch.tensor([3, 4, 0, 3])
        >>> z_ce, z_kd = reweighter(features, head.weight, head.bias)
        >>> loss = L.logit_adjusted_cross_entropy(z_ce, y, L.regularized_softmax_offsets([20, 20, 20, 300, 100]))
        >>> loss = loss + 4.0 * L.dakd_loss(z_kd, torch.randn(4, 3), lost_counts=[480, 480, 480])
        >>> loss.backward()                  # the FC rows' gradients arrive reweighted
        >>> reweighter.phi.shape, reweighter.last_weights.shape
        (torch.Size([5]), torch.Size([5]))

    Args:
        decoupled: DGR (old and new classes form separate class-balance groups) vs. GR.
        eta: ``η`` of the attenuation ``γ``.
        class_balance, task_balance, loss_balance: ablation switches (off: the factor is 1).
        phi_dtype: dtype of the accumulator ``Φ`` (float64 by default, as the authors' numpy code).
        host_ratios: when ``Φ`` is on the CPU, compute the scalar ratios from four group statistics read
            as Python floats (same formulas, fewer tensor operations; see :meth:`_host_class_weights`).
            ``False``: always the tensor formulas (what runs on accelerators, where a read would wait).
    """

    phi: torch.Tensor

    def __init__(
        self,
        *,
        decoupled: bool = True,
        eta: float = 1.0,
        class_balance: bool = True,
        task_balance: bool = True,
        loss_balance: bool = True,
        phi_dtype: torch.dtype = torch.float64,
        host_ratios: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(phi_dtype, torch.dtype) or not phi_dtype.is_floating_point:
            raise LossTypeError(f"phi_dtype must be a floating torch.dtype, got {phi_dtype!r}")
        self.decoupled = bool(decoupled)
        self.eta = _checks.non_negative_float("eta", eta)
        self.class_balance = bool(class_balance)
        self.task_balance = bool(task_balance)
        self.loss_balance = bool(loss_balance)
        self.host_ratios = bool(host_ratios)
        self.register_buffer("phi", torch.zeros(0, dtype=phi_dtype))
        self.num_classes = 0
        self.num_old = 0
        self.n_seen = 0.0
        self.n_new = 0.0
        self.gamma = 1.0
        self.last_weights: torch.Tensor | None = None
        self.last_beta: torch.Tensor | None = None
        self.last_ce_norms: torch.Tensor | None = None
        self.last_kd_norms: torch.Tensor | None = None
        self._is_old: torch.Tensor | None = None

    # ------------------------------------------------------------------ phase context
    def start_phase(self, num_classes: int, num_old: int, n_seen: float, n_new: float) -> None:
        """Start a phase: ``Φ ← 0`` for ``num_classes`` classes, the first ``num_old`` of them old.

        Args:
            num_classes: classes seen so far (rows of the classifier), ≥ 1.
            num_old: old classes, ``0`` in the base phase, else ``1 ≤ num_old < num_classes``.
            n_seen: ``N_seen``, original training count of all old classes (0 in phase 0).
            n_new: ``N_new``, training count of the new data.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise LossArgumentError(f"num_classes must be an int >= 1, got {num_classes!r}")
        num_old = _checks.class_count("num_old", num_old, num_classes - 1)
        n_seen = _checks.non_negative_float("n_seen", n_seen)
        n_new = _checks.non_negative_float("n_new", n_new)
        self.gamma = dgr_attenuation_gamma(n_seen, n_new, self.eta) if num_old > 0 else 1.0
        self.num_classes, self.num_old, self.n_seen, self.n_new = num_classes, num_old, n_seen, n_new
        self.phi = torch.zeros(num_classes, dtype=self.phi.dtype, device=self.phi.device)
        self._is_old = None
        self.last_weights = self.last_beta = self.last_ce_norms = self.last_kd_norms = None

    def _record(self, weights, beta, ce_norms, kd_norms) -> None:
        self.last_weights, self.last_beta = _detached(weights), _detached(beta)
        self.last_ce_norms, self.last_kd_norms = _detached(ce_norms), _detached(kd_norms)

    # ------------------------------------------------------------------ the layer
    def forward(
        self, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_ce, z_kd)``: ``z_ce = features @ weight.T + bias`` (``[B, C]``, computed once) and
        ``z_kd = z_ce[:, :num_old]`` (``[B, C_old]``, ``[B, 0]`` in phase 0): a separate tensor when
        gradients are recorded, a view of ``z_ce`` under ``torch.no_grad()``.

        Args:
            features: ``[B, D]`` penultimate features.
            weight: ``[C, D]`` classifier weight (``C`` = ``num_classes`` of the phase).
            bias: ``[C]`` or ``None``.
        """
        if self.num_classes == 0:
            raise PhaseStateError("GradientReweighter.start_phase(num_classes, num_old, n_seen, n_new) must be "
                                  "called before the first forward of a phase")
        features = _checks.logits_2d("features", features)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise LossTypeError(f"weight must be a [C, D] tensor, got {getattr(weight, 'shape', type(weight))}")
        if weight.shape != (self.num_classes, features.shape[1]):
            raise LossArgumentError(
                f"weight must have shape [{self.num_classes}, {features.shape[1]}] (num_classes of the phase, "
                f"feature size), got {list(weight.shape)}"
            )
        if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (self.num_classes,)):
            raise LossArgumentError(f"bias must be None or have shape [{self.num_classes}], "
                                    f"got {getattr(bias, 'shape', type(bias))}")
        device = features.device
        for name, t in (("weight", weight), ("bias", bias)):
            if t is None:
                continue
            if t.device != device:
                raise LossArgumentError(f"{name} is on {t.device} but features on {device}: the layer's tensors "
                                        f"must share a device")
            if t.dtype != features.dtype and not (torch.amp.is_autocast_available(device.type)
                                                  and torch.is_autocast_enabled(device.type)):
                raise LossTypeError(
                    f"{name} has dtype {t.dtype} but features {features.dtype}: outside torch.autocast the layer's "
                    f"tensors must share a floating dtype (as for F.linear); convert one of them, e.g. "
                    f"features.to({t.dtype}), or run the forward under torch.autocast"
                )
        if self.phi.device != features.device:
            self.phi = self.phi.to(features.device)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (features, weight, bias)
        )
        if not needs_grad:
            logits = F.linear(features, weight, bias)
            return logits, logits[:, : self.num_old]
        return _function_for(features.device.type).apply(features, weight, bias, self)

    def reweight_row_gradients(
        self,
        ce_rows: torch.Tensor,
        ce_bias: torch.Tensor,
        kd_rows: torch.Tensor | None = None,
        kd_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of METHODS.md §4 on given FC gradients: update ``Φ``, return the reweighted gradients.

        This is what the layer's backward does after computing the row gradients; it is public for
        classifiers that do not go through :meth:`forward` (e.g. gradients from ``torch.autograd.grad``).

        Args:
            ce_rows: ``[C, D]`` ``∂L_CE/∂W``; ``ce_bias``: ``[C]`` ``∂L_CE/∂b``.
            kd_rows: ``[C_old, D]`` ``∂L_KD/∂W`` of the old rows (``None``: no KD this step).
            kd_bias: ``[C_old]`` ``∂L_KD/∂b`` of the old rows.

        Returns:
            ``(grad_weight [C, D], grad_bias [C])``: ``w_c·∇L_CE + β·∇L_KD`` (old rows), ``w_c·∇L_CE``
            (new rows); in phase 0 ``α_c·∇L_CE``.
        """
        return self._reweight(ce_rows, ce_bias, kd_rows, kd_bias, in_place=False)

    def _old_mask(self) -> torch.Tensor:
        """``[C]`` bool ``c < num_old`` on ``Φ``'s device, built once per phase (and device)."""
        mask = self._is_old
        if mask is None or mask.device != self.phi.device or mask.shape[0] != self.phi.shape[0]:
            mask = torch.arange(self.phi.shape[0], device=self.phi.device) < self.num_old
            self._is_old = mask
        return mask

    def _reweight(self, ce_rows, ce_bias, kd_rows, kd_bias, *, in_place: bool):
        """:meth:`reweight_row_gradients`; ``in_place``: ``ce_rows``/``ce_bias`` are the layer's own fresh
        buffers and may be overwritten with the result (saves two allocations)."""
        num_old = self.num_old
        phi = self.phi
        ce_norms = torch.linalg.vector_norm(ce_rows, dim=1)                    # g_c
        phi.add_(ce_norms)                                                     # Φ_c += g_c (before the ratios)
        on_host = self.host_ratios and phi.device.type == "cpu"
        weights = self._host_class_weights(phi) if on_host else None
        if weights is None:
            weights = dgr_class_weights(
                phi, num_old, self.gamma, decoupled=self.decoupled, class_balance=self.class_balance,
                task_balance=self.task_balance, is_old=self._old_mask() if num_old > 0 else None,
            )
        if weights.dtype != ce_rows.dtype:
            weights = weights.to(ce_rows.dtype)
        if in_place:
            grad_weight, grad_bias = ce_rows.mul_(weights.unsqueeze(1)), ce_bias.mul_(weights)
        else:
            grad_weight, grad_bias = ce_rows * weights.unsqueeze(1), ce_bias * weights
        beta = kd_norms = None
        if num_old > 0:
            if kd_rows is not None:
                kd_norms = torch.linalg.vector_norm(kd_rows, dim=1)
            else:
                kd_norms = ce_norms.new_zeros(num_old)
            # β = ‖(w_c g_c)_c‖ / ‖(g^KD_c)_{c old}‖, as dgr_loss_balance (guard ‖g^KD‖ = 0: β = 1)
            if not self.loss_balance:
                beta = 1.0
            elif on_host:                                    # two norms read as floats: no 0-d tensor arithmetic
                numerator, denominator = torch.stack(
                    (torch.linalg.vector_norm(weights * ce_norms), torch.linalg.vector_norm(kd_norms))).tolist()
                beta = numerator / denominator if denominator > 0 else 1.0
            else:
                numerator = torch.linalg.vector_norm(weights * ce_norms)
                denominator = torch.linalg.vector_norm(kd_norms)
                beta = torch.where(denominator > 0, numerator / denominator, 1.0)
            if kd_rows is not None:
                if isinstance(beta, float):
                    grad_weight[:num_old].add_(kd_rows, alpha=beta)
                    if kd_bias is not None:
                        grad_bias[:num_old].add_(kd_bias, alpha=beta)
                else:
                    grad_weight[:num_old].addcmul_(kd_rows, beta)
                    if kd_bias is not None:
                        grad_bias[:num_old].addcmul_(kd_bias, beta)
            if isinstance(beta, float):
                beta = torch.tensor(beta, dtype=ce_rows.dtype, device=ce_rows.device)
        self._record(weights, beta, ce_norms, kd_norms)
        return grad_weight, grad_bias

    def _host_class_weights(self, phi: torch.Tensor) -> torch.Tensor | None:
        """:func:`dgr_class_weights` for a ``Φ`` in host memory, when every ``Φ_c`` is positive and finite.

        Then none of that function's guards applies and ``w_c = k_{group(c)} / Φ_c`` with one constant per
        group, ``k_g = (min_{j∈g} Φ_j)·r_g`` (``min`` over all classes for GR, ``r_g = 1`` without the task
        balance, and ``w_c = r_g`` without the class balance). The four group statistics (minimum and sum of
        ``Φ`` over the old and over the new classes) are read as Python floats — on the CPU a read waits for
        nothing — so the ratios are Python arithmetic instead of about twenty small tensor operations, each
        of which costs more than its arithmetic. Returns ``None`` (the caller runs the tensor formula, with
        its guards) when some ``Φ_c ≤ 0`` or a statistic is not finite.
        """
        num_old = self.num_old
        if num_old == 0:                                      # phase 0: α_c = min Φ / Φ_c over all classes
            if not self.class_balance:
                return None
            low = phi.amin().item()
            return phi.new_full(phi.shape, low).div_(phi) if 0.0 < low < math.inf else None
        old, new = phi[:num_old], phi[num_old:]
        min_old, min_new, sum_old, sum_new = torch.stack((old.amin(), new.amin(), old.sum(), new.sum())).tolist()
        if not (min_old > 0.0 and min_new > 0.0 and sum_old < math.inf and sum_new < math.inf):
            return None                                       # a Φ_c = 0 (or NaN/inf): the guarded formula
        r_old = r_new = 1.0
        if self.task_balance:                                 # ρ = mean_new Φ / mean_old Φ
            rho = (sum_new / new.shape[0]) / (sum_old / num_old)
            r_old, r_new = min(1.0, rho), min(1.0, rho * self.gamma)
        if not self.class_balance:
            return phi.new_full(phi.shape, r_new).masked_fill_(self._old_mask(), r_old)
        if not self.decoupled:
            min_old = min_new = min(min_old, min_new)
        return phi.new_full(phi.shape, min_new * r_new).masked_fill_(self._old_mask(), min_old * r_old).div_(phi)

    # ------------------------------------------------------------------ derived quantities
    def class_weights(self) -> torch.Tensor:
        """``w_c`` from the current ``Φ`` (what the next backward would use before adding its own ``g``)."""
        return dgr_class_weights(
            self.phi, self.num_old, self.gamma, decoupled=self.decoupled,
            class_balance=self.class_balance, task_balance=self.task_balance,
        )

    def log_prior_offsets(self, *, min_fraction: float = 1e-12) -> torch.Tensor:
        """Offsets of the regularised softmax with ``offsets="grad"``: ``o_c = log(Φ_c / Σ_j Φ_j)``.

        Guard: at the phase start (``Φ = 0``) the prior is uniform, ``o_c = −log C``; a single
        ``Φ_c = 0`` is floored at ``min_fraction`` (an estimate of the prior, not a zero class weight: a class
        without gradient so far keeps some mass). Returned as float64 on ``Φ``'s device (the losses convert
        offsets to the logits' dtype; before 1.0: float32).
        """
        if self.num_classes == 0:
            raise PhaseStateError("log_prior_offsets needs start_phase() first")
        phi = self.phi.to(torch.float64)
        total = phi.sum()
        prior = torch.where(total > 0, phi / torch.where(total > 0, total, 1.0), 1.0 / self.num_classes)
        return prior.clamp_min(min_fraction).log()

    # ------------------------------------------------------------------ checkpointing
    def get_extra_state(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "num_old": self.num_old, "n_seen": self.n_seen,
                "n_new": self.n_new, "gamma": self.gamma}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.num_classes = int(state["num_classes"])
        self.num_old = int(state["num_old"])
        self.n_seen = float(state["n_seen"])
        self.n_new = float(state["n_new"])
        self.gamma = float(state["gamma"])
        self._is_old = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        saved = state_dict.get(prefix + "phi")
        if isinstance(saved, torch.Tensor) and saved.shape != self.phi.shape:
            self.phi = torch.zeros(saved.shape, dtype=self.phi.dtype, device=self.phi.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"decoupled={self.decoupled}, eta={self.eta}, class_balance={self.class_balance}, "
                f"task_balance={self.task_balance}, loss_balance={self.loss_balance}, "
                f"num_classes={self.num_classes}, num_old={self.num_old}, gamma={self.gamma:.4g}")


def reweighted_linear(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reweighter: GradientReweighter
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional form of :meth:`GradientReweighter.forward`."""
    return reweighter(features, weight, bias)

