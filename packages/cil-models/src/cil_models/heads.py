"""Expandable classification heads made of per-phase blocks of class rows.

A class-incremental head learns ``s_0`` classes in phase 0, ``s_1`` more in phase 1, and so
on. Here each phase owns one block (an :class:`torch.nn.Linear` with ``s_t`` output rows);
:meth:`IncrementalHead.expand` appends a block and never touches the existing ones, and
training can still update every block (an optimiser simply receives all parameters).

Two forward modes (``fused=``), no per-class Python work in either:

* ``fused=False`` (default, exact): one matrix product per block, concatenated. The logits of
  old classes are then bit-identical before and after an expansion. (A single product against
  the concatenated weights is *not*: BLAS libraries pick their kernels by matrix shape, and a
  wider weight changes the rounding: with MKL, 10 → 20 classes of 512-d float32 features moved
  old logits by up to 3·10⁻⁵.)
* ``fused=True`` (fast): a single matrix product against ``torch.cat`` of the blocks (no cached
  copy). Old logits agree across an expansion to floating-point rounding only. Fewer kernels:
  use it where the number of tasks is large and every launch counts.

* :class:`IncrementalLinear`: ``z = f Wᵀ + b`` (the head of iCaRL-style baselines, WA, BiC,
  SS-IL, GR/DGR, the BalancedS-CE family).
* :class:`CosineLinear`: ``z_c = σ · cos(f, W_c)`` with a learnable scale ``σ``
  (Hou et al., "Learning a Unified Classifier Incrementally via Rebalancing", CVPR 2019, LUCIR).

Initialisation of a new block (``init=``):

* ``"kaiming"`` (default for :class:`IncrementalLinear`): rows from ``U(±sqrt(3/in_features))``
  (Kaiming-uniform with linear gain) and zero biases, as PyCIL's ``SimpleLinear``, whose
  defaults the WA/BiC/iCaRL baselines of this project follow.
* ``"torch"`` (default for :class:`CosineLinear`): :class:`torch.nn.Linear`'s own
  initialisation, rows and biases from ``U(±1/sqrt(in_features))`` — the same range as LUCIR's
  cosine layer.
* explicit rows: ``expand(n, weight=..., bias=...)`` (e.g. LUCIR's imprinted weights, the
  normalised class means of new classes).

A new block is created on the device and with the dtype of the existing blocks (before the
first block: of the head itself, i.e. whatever ``head.to(...)`` last set).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import one_of, positive_float, positive_int
from .errors import HeadStateError, ModelConfigError

INITS = ("kaiming", "torch")


class IncrementalHead(nn.Module):
    """Common part of the expandable heads: per-task blocks and their bookkeeping.

    Attributes derived from the blocks (so a loaded state can never disagree with them):
    ``num_classes``, ``num_tasks``, ``task_sizes`` (``[s_0, s_1, ...]``), ``boundaries``
    (``[0, s_0, s_0+s_1, ..., num_classes]``) and ``task_slices`` (``slice`` objects into the
    class dimension).
    """

    blocks: nn.ModuleList

    def __init__(self, in_features: int, bias: bool, init: str, fused: bool) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.use_bias = bool(bias)
        self.fused = bool(fused)
        self.init = one_of("init", init, INITS)
        self.blocks = nn.ModuleList()
        # Empty, non-persistent: follows .to(device/dtype) so the first block lands in the right place.
        self.register_buffer("_placement", torch.empty(0), persistent=False)

    # ---- bookkeeping -------------------------------------------------------------------------
    @property
    def task_sizes(self) -> list[int]:
        return [block.out_features for block in self.blocks]

    @property
    def num_tasks(self) -> int:
        return len(self.blocks)

    @property
    def num_classes(self) -> int:
        return sum(self.task_sizes)

    @property
    def boundaries(self) -> list[int]:
        edges = [0]
        for size in self.task_sizes:
            edges.append(edges[-1] + size)
        return edges

    @property
    def task_slices(self) -> list[slice]:
        edges = self.boundaries
        return [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]

    def task_slice(self, task: int) -> slice:
        """The class slice of ``task`` (negative indices count from the newest task)."""
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"task must be an int, got {type(task).__name__}")
        if not -self.num_tasks <= task < self.num_tasks:
            raise HeadStateError(
                f"task must be in [{-self.num_tasks}, {self.num_tasks - 1}] for a head with "
                f"{self.num_tasks} tasks, got {task}"
            )
        return self.task_slices[task]

    # ---- expansion ---------------------------------------------------------------------------
    def expand(self, n_new: int, weight: Tensor | None = None, bias: Tensor | None = None) -> None:
        """Append a block of ``n_new`` classes; the existing blocks are left untouched.

        Args:
            n_new: number of classes of the new task (>= 1).
            weight: optional initial rows ``[n_new, in_features]`` (copied), instead of ``init``.
            bias: optional initial biases ``[n_new]`` (only for heads with a bias).
        """
        positive_int("n_new", n_new)
        reference = self.blocks[-1].weight if len(self.blocks) else self._placement
        block = nn.Linear(
            self.in_features, n_new, bias=self.use_bias, device=reference.device, dtype=reference.dtype
        )
        with torch.no_grad():
            if self.init == "kaiming":
                bound = math.sqrt(3.0 / self.in_features)
                block.weight.uniform_(-bound, bound)
                if block.bias is not None:
                    block.bias.zero_()
            if weight is not None:
                block.weight.copy_(_checked_rows("weight", weight, (n_new, self.in_features)))
            if bias is not None:
                if block.bias is None:
                    raise ModelConfigError("bias was given but this head has no bias (bias=False)")
                block.bias.copy_(_checked_rows("bias", bias, (n_new,)))
        self.blocks.append(block)

    def expand_to(self, task_sizes: list[int] | tuple[int, ...]) -> None:
        """Expand until ``self.task_sizes == list(task_sizes)``; the current sizes must be a prefix."""
        sizes = [positive_int(f"task_sizes[{i}]", s) for i, s in enumerate(task_sizes)]
        current = self.task_sizes
        if sizes[: len(current)] != current:
            raise HeadStateError(
                f"task_sizes {sizes} do not start with the head's current task sizes {current}; "
                "a head can only grow by appending tasks"
            )
        for size in sizes[len(current) :]:
            self.expand(size)

    # ---- weights -----------------------------------------------------------------------------
    def _require_classes(self) -> None:
        if not len(self.blocks):
            raise HeadStateError(f"{type(self).__name__} has no classes yet; call expand(n_new) first")

    def full_weight(self) -> Tensor:
        """All class rows ``[num_classes, in_features]`` (``torch.cat`` of the blocks, differentiable)."""
        self._require_classes()
        if len(self.blocks) == 1:
            return self.blocks[0].weight
        return torch.cat([block.weight for block in self.blocks], dim=0)

    def full_bias(self) -> Tensor | None:
        """All biases ``[num_classes]`` (differentiable), or ``None`` for a head without bias."""
        self._require_classes()
        if not self.use_bias:
            return None
        if len(self.blocks) == 1:
            return self.blocks[0].bias
        return torch.cat([block.bias for block in self.blocks], dim=0)

    @torch.no_grad()
    def weight_norms(self, p: float = 2.0) -> Tensor:
        """Per-class norms ``‖W_c‖_p`` ``[num_classes]`` of the raw rows (no gradient)."""
        p = positive_float("p", p)
        return torch.linalg.vector_norm(self.full_weight().detach(), ord=p, dim=1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, task_sizes={self.task_sizes}, init={self.init!r}, fused={self.fused}"
        )


class IncrementalLinear(IncrementalHead):
    """Expandable linear head ``z = f Wᵀ + b`` over all classes seen so far.

    Args:
        in_features: feature dimension of the backbone.
        bias: whether the classes have biases.
        init: initialisation of new blocks, ``"kaiming"`` (PyCIL, default) or ``"torch"``.
        fused: one matrix product over all blocks instead of one per block (see the module
            documentation; default ``False``: old logits bit-identical across expansions).
    """

    def __init__(self, in_features: int, bias: bool = True, *, init: str = "kaiming", fused: bool = False) -> None:
        super().__init__(in_features, bias, init, fused)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of features ``[B, in_features]``."""
        self._require_classes()
        if self.fused or len(self.blocks) == 1:
            return F.linear(features, self.full_weight(), self.full_bias())
        return torch.cat([block(features) for block in self.blocks], dim=1)


class CosineLinear(IncrementalHead):
    """Expandable cosine-normalised head ``z_c = σ · ⟨f/‖f‖, W_c/‖W_c‖⟩`` (LUCIR, Hou et al. 2019).

    One scale ``σ`` is shared by all classes and survives expansions, as in LUCIR's split
    cosine layer. The head has no bias (``full_bias()`` is ``None``).

    Args:
        in_features: feature dimension of the backbone.
        scale_init: initial ``σ`` (LUCIR: 1.0).
        learn_scale: ``σ`` is a parameter (default) or a fixed buffer.
        init: initialisation of new blocks, ``"torch"`` (default) or ``"kaiming"``.
        eps: lower bound of the norms in the normalisation (as :func:`torch.nn.functional.normalize`).
        fused: one matrix product over all blocks instead of one per block (see the module
            documentation; default ``False``: old logits bit-identical across expansions).
    """

    def __init__(
        self,
        in_features: int,
        *,
        scale_init: float = 1.0,
        learn_scale: bool = True,
        init: str = "torch",
        eps: float = 1e-12,
        fused: bool = False,
    ) -> None:
        super().__init__(in_features, False, init, fused)
        scale = torch.tensor(positive_float("scale_init", scale_init))
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.eps = positive_float("eps", eps)

    def forward(self, features: Tensor) -> Tensor:
        """Scaled cosine similarities ``[B, num_classes]`` (one matrix product)."""
        return self.scale * self.cosine(features)

    def cosine(self, features: Tensor) -> Tensor:
        """Unscaled cosine similarities ``cos(f, W_c)`` ``[B, num_classes]``."""
        self._require_classes()
        unit = F.normalize(features, dim=1, eps=self.eps)
        if self.fused or len(self.blocks) == 1:
            return F.linear(unit, F.normalize(self.full_weight(), dim=1, eps=self.eps))
        return torch.cat([F.linear(unit, F.normalize(b.weight, dim=1, eps=self.eps)) for b in self.blocks], dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", learn_scale={self.learn_scale}"


def _checked_rows(name: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {list(shape)}, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ModelConfigError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value.detach()
