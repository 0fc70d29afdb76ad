"""Nearest-mean-of-exemplars classification (Rebuffi et al., "iCaRL: Incremental Classifier and
Representation Learning", CVPR 2017, Algorithm 1).

With ``φ(x)`` the L2-normalised feature of ``x`` and ``P_c`` the exemplars of class ``c``:

    μ_c = normalise( (1/|P_c|) Σ_{p ∈ P_c} φ(p) ),        y* = argmin_c ‖φ(x) − μ_c‖₂.

The class means are renormalised to unit length, as in iCaRL's code and PyCIL. Scores are
``−‖φ(x) − μ_c‖₂`` (larger is better), computed with one matrix product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import one_of, positive_int
from .errors import HeadStateError, ModelConfigError

MISSING = ("error", "ignore")


def normalized_class_means(
    features: Tensor, labels: Tensor, num_classes: int, eps: float = 1e-12
) -> tuple[Tensor, Tensor]:
    """Unit-length means of the L2-normalised features of each class, and the class counts.

    Args:
        features: ``[N, D]`` features (any floating dtype; computed in at least float32).
        labels: ``[N]`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes ``C``.

    Returns:
        ``(means [C, D], counts [C])``; rows of classes without samples are zero.
    """
    positive_int("num_classes", num_classes)
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ModelConfigError(
            f"features must be a floating-point tensor of shape [N, D], got "
            f"{getattr(features, 'dtype', type(features).__name__)} {list(getattr(features, 'shape', []))}"
        )
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ModelConfigError(
            f"labels must be a 1-D tensor with one label per feature row ({features.shape[0]}), got "
            f"shape {list(getattr(labels, 'shape', []))}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ModelConfigError(
            f"labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    dtype = torch.promote_types(features.dtype, torch.float32)
    unit = F.normalize(features.to(dtype), dim=1, eps=eps)
    labels = labels.to(device=features.device, dtype=torch.long)
    sums = torch.zeros(num_classes, features.shape[1], dtype=dtype, device=features.device)
    sums.index_add_(0, labels, unit)
    counts = torch.bincount(labels, minlength=num_classes)
    means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1).to(dtype), dim=1, eps=eps)
    return means, counts


class NMEClassifier:
    """iCaRL's nearest-mean-of-exemplars classifier on normalised features.

    Args:
        missing: what :meth:`fit` does with classes that have no sample: ``"error"`` (default,
            raises naming them) or ``"ignore"`` (they are never predicted: score ``-inf``).
        eps: lower bound of the norms in the normalisations.
    """

    def __init__(self, missing: str = "error", eps: float = 1e-12) -> None:
        self.missing = one_of("missing", missing, MISSING)
        self.eps = float(eps)
        self.means: Tensor | None = None
        self.present: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return 0 if self.means is None else int(self.means.shape[0])

    def fit(self, features: Tensor, labels: Tensor, num_classes: int) -> None:
        """Compute the unit class means ``μ_c`` from exemplar features ``[N, D]`` and labels ``[N]``."""
        means, counts = normalized_class_means(features, labels, num_classes, self.eps)
        present = counts > 0
        if not bool(present.all()) and self.missing == "error":
            absent = torch.nonzero(~present).flatten().tolist()
            raise ModelConfigError(
                f"classes {absent} have no samples among the {labels.shape[0]} given; pass features of "
                "every class in [0, num_classes), or use NMEClassifier(missing='ignore')"
            )
        self.means, self.present = means, present

    def _require_fit(self) -> tuple[Tensor, Tensor]:
        if self.means is None or self.present is None:
            raise HeadStateError("NMEClassifier is not fitted; call fit(features, labels, num_classes) first")
        return self.means, self.present

    def scores(self, features: Tensor) -> Tensor:
        """``−‖φ(x) − μ_c‖₂`` ``[B, C]`` (``-inf`` for classes without samples when ignored)."""
        means, present = self._require_fit()
        if features.dim() != 2 or features.shape[1] != means.shape[1]:
            raise ModelConfigError(
                f"features must have shape [B, {means.shape[1]}], got {list(features.shape)}"
            )
        unit = F.normalize(features.to(device=means.device, dtype=means.dtype), dim=1, eps=self.eps)
        squared = (
            unit.square().sum(1, keepdim=True) + means.square().sum(1).unsqueeze(0) - 2.0 * unit @ means.T
        )
        scores = -squared.clamp(min=0.0).sqrt()
        return scores.masked_fill(~present.unsqueeze(0), float("-inf"))

    def predict(self, features: Tensor) -> Tensor:
        """Labels ``[B]`` of the nearest class means."""
        return self.scores(features).argmax(dim=1)

    def to(self, device: torch.device | str) -> NMEClassifier:
        """Move the class means to ``device`` (in place); returns ``self``."""
        if self.means is not None and self.present is not None:
            self.means, self.present = self.means.to(device), self.present.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{"means": [C, D] or None, "present": [C] or None, "missing": str}`` (tensors cloned)."""
        return {
            "means": None if self.means is None else self.means.detach().clone(),
            "present": None if self.present is None else self.present.clone(),
            "missing": self.missing,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        if not isinstance(state, dict) or set(state) != {"means", "present", "missing"}:
            raise ModelConfigError(
                "state must be a dict with the keys 'means', 'present', 'missing' (from NMEClassifier.state_dict()), "
                f"got {sorted(state) if isinstance(state, dict) else type(state).__name__}"
            )
        means, present = state["means"], state["present"]
        if (means is None) != (present is None):
            raise ModelConfigError("state['means'] and state['present'] must both be tensors or both None")
        if means is not None and (means.dim() != 2 or present.shape != (means.shape[0],)):
            raise ModelConfigError(
                f"state['means'] must be [C, D] and state['present'] [C], got {list(means.shape)} and "
                f"{list(present.shape)}"
            )
        self.missing = one_of("state['missing']", state["missing"], MISSING)
        self.means = None if means is None else means.clone()
        self.present = None if present is None else present.to(torch.bool).clone()
