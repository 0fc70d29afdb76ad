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
* :class:`LocalSimilarityHead`: PODNet's local-similarity classifier, ``K`` proxies per class
  merged by a softmax over proxies (Douillard et al., "PODNet", ECCV 2020); in
  :mod:`cil_models.local_similarity`.

Growing the input (DER/FOSTER, several feature extractors): :meth:`IncrementalHead.add_input_features`
appends columns to every block (old rows keep their old columns; the new columns are drawn
from the head's initialisation, or zero), :meth:`IncrementalHead.keep_input_features` keeps a
range of columns. Both replace the weight parameters: rebuild the optimiser afterwards.

Initialisation of a new block (``init=``):

* ``"kaiming"`` (default for :class:`IncrementalLinear`): rows from ``U(±sqrt(3/in_features))``
  (Kaiming-uniform with linear gain) and zero biases, as PyCIL's ``SimpleLinear``, whose
  defaults the WA/BiC/iCaRL baselines of this project follow.
* ``"torch"`` (default for :class:`CosineLinear`): :class:`torch.nn.Linear`'s own
  initialisation, rows and biases from ``U(±1/sqrt(in_features))`` — the same range as LUCIR's
  cosine layer.
* ``"normal"``: rows from ``N(0, 1/in_features)`` (Kaiming-normal with linear gain) and zero
  biases, as PODNet's ``add_classes`` (default of :class:`LocalSimilarityHead`).
* explicit rows: ``expand(n, weight=..., bias=...)``, or the imprinting helpers
  :meth:`CosineLinear.expand_imprinted` (LUCIR) and :meth:`LocalSimilarityHead.expand_imprinted`
  (PODNet).

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

INITS = ("kaiming", "torch", "normal")
NEW_COLUMNS = ("random", "zero")


class IncrementalHead(nn.Module):
    """Common part of the expandable heads: per-task blocks and their bookkeeping.

    Attributes derived from the blocks (so a loaded state can never disagree with them):
    ``num_classes``, ``num_tasks``, ``task_sizes`` (``[s_0, s_1, ...]``), ``boundaries``
    (``[0, s_0, s_0+s_1, ..., num_classes]``) and ``task_slices`` (``slice`` objects into the
    class dimension).
    """

    blocks: nn.ModuleList
    rows_per_class = 1
    """Weight rows per class (``K`` proxies for :class:`LocalSimilarityHead`)."""

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
        return [block.out_features // self.rows_per_class for block in self.blocks]

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
            weight: optional initial rows ``[n_new · rows_per_class, in_features]`` (copied),
                instead of ``init``.
            bias: optional initial biases ``[n_new]`` (only for heads with a bias).
        """
        positive_int("n_new", n_new)
        rows = n_new * self.rows_per_class
        reference = self.blocks[-1].weight if len(self.blocks) else self._placement
        block = nn.Linear(
            self.in_features, rows, bias=self.use_bias, device=reference.device, dtype=reference.dtype
        )
        with torch.no_grad():
            if self.init != "torch":
                self._draw_rows_(block.weight)
                if block.bias is not None:
                    block.bias.zero_()
            if weight is not None:
                block.weight.copy_(_checked_rows("weight", weight, (rows, self.in_features)))
            if bias is not None:
                if block.bias is None:
                    raise ModelConfigError("bias was given but this head has no bias (bias=False)")
                block.bias.copy_(_checked_rows("bias", bias, (n_new,)))
        self.blocks.append(block)

    def _draw_rows_(self, weight: Tensor, fan_in: int | None = None) -> None:
        """Fill ``weight`` in place from the head's initialisation for inputs of width ``fan_in``."""
        fan_in = self.in_features if fan_in is None else fan_in
        if self.init == "kaiming":
            bound = math.sqrt(3.0 / fan_in)
            weight.uniform_(-bound, bound)
        elif self.init == "normal":
            weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
        else:  # "torch": nn.Linear's kaiming_uniform_(a=sqrt(5)), i.e. U(±1/sqrt(fan_in))
            bound = 1.0 / math.sqrt(fan_in)
            weight.uniform_(-bound, bound)

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

    # ---- input width (several feature extractors) -------------------------------------------
    @torch.no_grad()
    def add_input_features(self, n_extra: int, new_columns: str = "random") -> None:
        """Widen the input by ``n_extra`` features (a new extractor's, appended after the old ones).

        Every row keeps its old columns; the ``n_extra`` new columns of the existing rows are
        drawn from the head's initialisation at the new width (``"random"``, default: PyCIL's
        ``DERNet``/``FOSTERNet.update_fc``, which copy the old block into a freshly initialised
        wider layer; Yan et al., CVPR 2021; Wang et al., ECCV 2022) or set to 0 (``"zero"``: the
        old logits are unchanged by the new features until training moves them). Blocks added
        later get rows of the full width. The weights become new parameters (same
        ``requires_grad``): rebuild the optimiser afterwards.
        """
        positive_int("n_extra", n_extra)
        one_of("new_columns", new_columns, NEW_COLUMNS)
        width = self.in_features + n_extra
        for block in self.blocks:
            extra = block.weight.new_zeros(block.out_features, n_extra)
            if new_columns == "random":
                self._draw_rows_(extra, fan_in=width)
            _replace_weight(block, torch.cat([block.weight, extra], dim=1))
        self.in_features = width

    @torch.no_grad()
    def keep_input_features(self, start: int, stop: int) -> None:
        """Keep only the input columns ``start:stop`` of every row (the others are dropped).

        Used when a network returns to one of its feature extractors (FOSTER's compression, Wang
        et al., ECCV 2022). The weights become new parameters: rebuild the optimiser afterwards.
        """
        if not (0 <= start < stop <= self.in_features):
            raise ModelConfigError(
                f"the kept columns must satisfy 0 <= start < stop <= in_features = {self.in_features}, "
                f"got {start}:{stop}"
            )
        for block in self.blocks:
            _replace_weight(block, block.weight[:, start:stop].clone())
        self.in_features = stop - start

    # ---- weights -----------------------------------------------------------------------------
    def _mean_row_norm(self) -> float | None:
        """Mean ``‖W_c‖₂`` over the existing rows, ``None`` without rows (for imprinting)."""
        if not len(self.blocks):
            return None
        return float(torch.linalg.vector_norm(self.full_weight().detach().double(), dim=1).mean())

    def _require_classes(self) -> None:
        if not len(self.blocks):
            raise HeadStateError(f"{type(self).__name__} has no classes yet; call expand(n_new) first")

    def _init_scale(self, scale_init: float, learn_scale: bool) -> None:
        """The scale of a normalised head (LUCIR's σ, PODNet's η): a parameter, or a fixed buffer."""
        scale = torch.tensor(positive_float("scale_init", scale_init))
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def _row_cosines(self, features: Tensor) -> Tensor:
        """``cos(f, w_r)`` for every weight row ``r`` ``[B, rows]``: one product per block (or one in all when
        ``fused``) of the L2-normalised features and rows, ``eps`` bounding the norms (the normalised heads)."""
        self._require_classes()
        unit = F.normalize(features, dim=1, eps=self.eps)
        if self.fused or len(self.blocks) == 1:
            return F.linear(unit, F.normalize(self.full_weight(), dim=1, eps=self.eps))
        return torch.cat([F.linear(unit, F.normalize(b.weight, dim=1, eps=self.eps)) for b in self.blocks], dim=1)

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


def _replace_weight(block: nn.Linear, weight: Tensor) -> None:
    """Give ``block`` a new weight parameter (new width), keeping ``requires_grad``."""
    requires_grad = block.weight.requires_grad
    block.weight = nn.Parameter(weight.contiguous(), requires_grad=requires_grad)
    block.in_features = weight.shape[1]


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
        self._init_scale(scale_init, learn_scale)
        self.eps = positive_float("eps", eps)

    def forward(self, features: Tensor) -> Tensor:
        """Scaled cosine similarities ``[B, num_classes]`` (one matrix product)."""
        return self.scale * self.cosine(features)

    def cosine(self, features: Tensor) -> Tensor:
        """Unscaled cosine similarities ``cos(f, W_c)`` ``[B, num_classes]``."""
        return self._row_cosines(features)

    def imprinted_rows(self, class_means: Tensor) -> Tensor:
        """LUCIR's imprinted rows ``normalise(μ_c) · mean_{j old} ‖W_j‖₂`` ``[n_new, in_features]``.

        ``class_means`` ``[n_new, in_features]``: per new class, the mean of its L2-normalised
        features from the network *before* training on the new task (e.g.
        :func:`~cil_models.normalized_class_means`; the rows are renormalised here). Hou et al.,
        CVPR 2019, Sec. 3.2 / official ``class_incremental_cosine_cifar100.py`` ("imprint
        weights"); no equal-count assumption, so long-tailed classes are fine. Without old rows
        the imprinted rows have unit norm.
        """
        if not isinstance(class_means, Tensor) or class_means.dim() != 2:
            raise ModelConfigError(
                f"class_means must be a tensor [n_new, {self.in_features}], got {type(class_means).__name__} "
                f"{list(getattr(class_means, 'shape', []))}"
            )
        means = _checked_rows("class_means", class_means, (class_means.shape[0], self.in_features))
        norms = torch.linalg.vector_norm(means, dim=1)
        if means.shape[0] == 0 or not bool((norms > 0).all()) or not bool(torch.isfinite(means).all()):
            raise ModelConfigError(
                "class_means must be finite with one nonzero row per new class (a zero row is a class "
                "without samples)"
            )
        scale = self._mean_row_norm()
        unit = F.normalize(means, dim=1, eps=self.eps)
        return unit if scale is None else unit * scale

    def expand_imprinted(self, class_means: Tensor) -> None:
        """Append a task whose rows are :meth:`imprinted_rows` of ``class_means`` (LUCIR)."""
        self.expand(int(class_means.shape[0]), weight=self.imprinted_rows(class_means))

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
