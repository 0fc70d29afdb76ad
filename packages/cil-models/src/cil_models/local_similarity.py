"""PODNet's local-similarity classifier (LSC) and its k-means proxy imprinting.

Douillard et al., "PODNet: Pooled Outputs Distillation for Small-Tasks Incremental Learning",
ECCV 2020, Sec. 3.2; official code ``inclearn/lib/network/classifiers.py``
(``CosineClassifier.forward``, ``_reduce_proxies``, ``add_imprinted_classes``).

Each class ``c`` owns ``K`` proxies ``θ_{c,1..K}`` (PODNet: ``K = 10``). With ``f̂ = f/‖f‖`` and
``θ̂ = θ/‖θ‖``:

    s_{c,k} = −‖f̂ − θ̂_{c,k}‖² = 2⟨f̂, θ̂_{c,k}⟩ − 2          (``similarity="neg-squared-distance"``)
    s_c     = Σ_k softmax_k(γ · s_{c,k}) · s_{c,k}          (γ: ``merge_scale``, PODNet 1)

and the head returns ``η · s_c`` with a learnable scale ``η`` (PODNet's ``learned_scaling``
``FactorScalar``, initialised to 1), the input of the classification loss; the argmax (CNN
prediction) is that of the unscaled ``s_c``, given by :meth:`LocalSimilarityHead.similarity`.
``similarity="cosine"`` uses ``s_{c,k} = ⟨f̂, θ̂_{c,k}⟩`` instead (the LT-CIL / PyCIL ports).

Proxies are stored per task like the other heads' rows (``blocks[t].weight`` has ``s_t · K``
rows, class-major: the proxies of one class are consecutive). New classes are initialised
Kaiming-normal (PODNet's ``add_classes``, used for task 0) or imprinted:
:func:`kmeans_proxies` clusters each new class's L2-normalised features into ``K`` centres and
:meth:`LocalSimilarityHead.expand_imprinted` scales them by the mean norm of the existing
proxies (``add_imprinted_classes`` with ``multi_class_diff: kmeans``; the centres are not
renormalised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import one_of, positive_float, positive_int
from .errors import ModelConfigError
from .heads import IncrementalHead

SIMILARITIES = ("neg-squared-distance", "cosine")


class LocalSimilarityHead(IncrementalHead):
    """Expandable local-similarity classifier with ``K`` proxies per class (PODNet, ECCV 2020).

    Args:
        in_features: feature dimension of the backbone.
        proxies_per_class: ``K`` (PODNet: 10).
        scale_init: initial ``η`` (PODNet: 1.0).
        learn_scale: ``η`` is a parameter (default) or a fixed buffer.
        merge_scale: ``γ`` of the softmax over proxies (PODNet: 1, fixed).
        similarity: ``"neg-squared-distance"`` (PODNet's ``neg_stable_cosine_distance``, default)
            or ``"cosine"``.
        init: initialisation of new proxies: ``"normal"`` (Kaiming-normal, PODNet; default),
            ``"kaiming"`` or ``"torch"``.
        eps: lower bound of the norms in the normalisation.
        fused: one matrix product over all blocks instead of one per block.
    """

    def __init__(
        self,
        in_features: int,
        *,
        proxies_per_class: int = 10,
        scale_init: float = 1.0,
        learn_scale: bool = True,
        merge_scale: float = 1.0,
        similarity: str = "neg-squared-distance",
        init: str = "normal",
        eps: float = 1e-12,
        fused: bool = False,
    ) -> None:
        proxies_per_class = positive_int("proxies_per_class", proxies_per_class)
        super().__init__(in_features, False, init, fused)
        self.rows_per_class = proxies_per_class
        self._init_scale(scale_init, learn_scale)
        self.merge_scale = positive_float("merge_scale", merge_scale)
        self.similarity_kind = one_of("similarity", similarity, SIMILARITIES)
        self.eps = positive_float("eps", eps)

    @property
    def proxies_per_class(self) -> int:
        return self.rows_per_class

    def forward(self, features: Tensor) -> Tensor:
        """Scaled class similarities ``η · s_c`` ``[B, num_classes]``."""
        return self.scale * self.similarity(features)

    def proxy_similarities(self, features: Tensor) -> Tensor:
        """``s_{c,k}`` ``[B, num_classes, K]`` (before the merge over proxies)."""
        cos = self._row_cosines(features).unflatten(1, (-1, self.rows_per_class))
        return 2.0 * cos - 2.0 if self.similarity_kind == "neg-squared-distance" else cos

    def similarity(self, features: Tensor) -> Tensor:
        """Unscaled class similarities ``s_c = Σ_k softmax_k(γ s_{c,k}) s_{c,k}`` ``[B, num_classes]``."""
        s = self.proxy_similarities(features)
        attention = torch.softmax(self.merge_scale * s, dim=2)
        return (attention * s).sum(dim=2)

    def proxies(self) -> Tensor:
        """All proxies ``[num_classes, K, in_features]`` (differentiable)."""
        return self.full_weight().unflatten(0, (-1, self.rows_per_class))

    @torch.no_grad()
    def weight_norms(self, p: float = 2.0) -> Tensor:
        """Per-class mean of the proxies' norms ``mean_k ‖θ_{c,k}‖_p`` ``[num_classes]`` (no gradient)."""
        p = positive_float("p", p)
        return torch.linalg.vector_norm(self.proxies().detach(), ord=p, dim=2).mean(dim=1)

    def expand(self, n_new: int, weight: Tensor | None = None, bias: Tensor | None = None) -> None:
        """Append ``n_new`` classes; ``weight`` may be ``[n_new, K, in_features]`` or ``[n_new·K, in_features]``."""
        if isinstance(weight, Tensor) and weight.dim() == 3:
            weight = weight.flatten(0, 1)
        super().expand(n_new, weight, bias)

    def imprinted_proxies(self, centres: Tensor) -> Tensor:
        """PODNet's imprinted proxies: ``centres · mean ‖θ‖₂`` over the existing proxies.

        ``centres`` ``[n_new, K, in_features]``: e.g. :func:`kmeans_proxies` of the new classes'
        features (cluster centres of L2-normalised features, not renormalised, as
        ``add_imprinted_classes``). Without existing proxies they are used as given.
        """
        shape = (centres.shape[0], self.rows_per_class, self.in_features) if isinstance(centres, Tensor) else None
        if shape is None or centres.dim() != 3 or tuple(centres.shape) != shape or centres.shape[0] == 0:
            raise ModelConfigError(
                f"centres must be a tensor [n_new, {self.rows_per_class}, {self.in_features}], got "
                f"{type(centres).__name__} {list(getattr(centres, 'shape', []))}"
            )
        if not bool(torch.isfinite(centres).all()):
            raise ModelConfigError("centres must be finite")
        scale = self._mean_row_norm()
        return centres.detach() if scale is None else centres.detach() * scale

    def expand_imprinted(self, centres: Tensor) -> None:
        """Append a task whose proxies are :meth:`imprinted_proxies` of ``centres`` (PODNet)."""
        self.expand(int(centres.shape[0]), weight=self.imprinted_proxies(centres))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", proxies_per_class={self.rows_per_class}, similarity={self.similarity_kind!r}, "
            f"merge_scale={self.merge_scale}, learn_scale={self.learn_scale}"
        )


def kmeans(points: Tensor, k: int, *, iterations: int = 100, generator: torch.Generator | None = None) -> Tensor:
    """``k`` cluster centres ``[k, D]`` of ``points`` ``[N, D]`` (k-means++ seeding, then Lloyd).

    Each Lloyd step is two matrix operations (distances, then ``index_add_`` of the members).
    A cluster that loses all its points keeps its centre. With ``N <= k`` the points themselves
    are the centres, cycled to fill ``k`` rows (a tail class with fewer samples than proxies;
    RECO: no source covers this case). Seeded by ``generator`` (default: the global one), a CPU generator
    whatever the device of ``points``: the k-means++ draws are made on the CPU.
    """
    positive_int("k", k)
    positive_int("iterations", iterations)
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[0] == 0 or not points.is_floating_point():
        raise ModelConfigError(
            f"points must be a non-empty floating-point tensor [N, D], got {list(getattr(points, 'shape', []))}"
        )
    if generator is not None and generator.device.type != "cpu":
        raise ModelConfigError(f"generator must be a CPU generator (the seeding draws on the CPU), got one on "
                               f"{generator.device}")
    n = points.shape[0]
    if n <= k:
        return points[torch.arange(k, device=points.device) % n].clone()
    centres = _kmeans_plus_plus(points, k, generator)
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1).to(points.dtype), centres)
        if torch.equal(updated, centres):
            break
        centres = updated
    return centres


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, SODA 2007): each new centre drawn ∝ D²."""
    n = points.shape[0]
    first = torch.randint(n, (1,), generator=generator, device="cpu").item()
    chosen = [first]
    nearest = (points - points[first]).square().sum(dim=1)
    for _ in range(k - 1):
        weights = nearest.double().cpu()
        if float(weights.sum()) <= 0:  # every point sits on a centre already
            index = int(torch.randint(n, (1,), generator=generator).item())
        else:
            index = int(torch.multinomial(weights, 1, generator=generator).item())
        chosen.append(index)
        nearest = torch.minimum(nearest, (points - points[index]).square().sum(dim=1))
    return points[chosen].clone()


def kmeans_proxies(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    proxies_per_class: int,
    *,
    iterations: int = 100,
    generator: torch.Generator | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """Per class, ``K`` k-means centres of its L2-normalised features ``[num_classes, K, D]``.

    PODNet's imprinting of new classes (``add_imprinted_classes``, ``KMeans(n_clusters=K)`` on
    the normalised features of every training image of the class, from the network before the
    task). ``labels`` are in ``[0, num_classes)`` (new classes counted from 0); every class needs
    at least one sample. One k-means per class (a phase has few new classes).
    """
    positive_int("num_classes", num_classes)
    positive_int("proxies_per_class", proxies_per_class)
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ModelConfigError(f"features must be a floating-point tensor [N, D], got {list(getattr(features, 'shape', []))}")
    if not isinstance(labels, Tensor) or labels.shape != (features.shape[0],) or labels.is_floating_point():
        raise ModelConfigError(
            f"labels must be an integer tensor [N] with N = {features.shape[0]}, got {list(getattr(labels, 'shape', []))}"
        )
    in_range = labels.numel() > 0 and int(labels.min()) >= 0 and int(labels.max()) < num_classes
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes) if in_range else None
    if counts is None or bool((counts == 0).any()):
        raise ModelConfigError(
            f"labels must lie in [0, {num_classes - 1}] with at least one sample per class; "
            f"counts {None if counts is None else counts.tolist()}"
        )
    unit = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=1, eps=eps)
    labels = labels.to(unit.device)
    return torch.stack(
        [kmeans(unit[labels == c], proxies_per_class, iterations=iterations, generator=generator) for c in range(num_classes)]
    )
