"""iCaRL herding (Rebuffi et al., CVPR 2017), vectorised over samples and over classes.

On L2-normalised features ``f_j`` of one class with mean ``μ = (1/n) Σ_j f_j``, step ``i = 1..k`` picks
the not-yet-chosen sample that brings the mean of the chosen set closest to ``μ``:

    p_i = argmin_{j ∉ P} ‖ μ − (S_{i−1} + f_j) / i ‖₂,    S_i = S_{i−1} + f_{p_i}.

Expanding the square, ``‖μ − (S + f_j)/i‖² = ‖t‖² − (2/i)·t·f_j + ‖f_j‖²/i²`` with ``t = μ − S/i``, so
one step is a single matrix-vector product over all candidates (no loop over samples); many classes
are handled at once as a padded batch ``[G, n, d]`` (no loop over classes). Ties go to the lowest index.
The first ``k`` entries of the order are the exemplars kept when a quota shrinks to ``k``.
"""

from __future__ import annotations

import torch

from ._checks import check_int, check_labels
from .errors import DataError

__all__ = ["herding_order", "herding_select"]

# Padded batches are processed in chunks of at most this many feature elements (G·n·d).
_CHUNK_ELEMENTS = 1 << 26


def _check_features(features: object, name: str = "features") -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise DataError(f"{name} must be a float tensor [N, d], got {type(features).__name__}")
    if features.dim() != 2:
        raise DataError(f"{name} must have shape [N, d], got {tuple(features.shape)}")
    if not features.dtype.is_floating_point:
        raise DataError(f"{name} must be floating point, got dtype {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise DataError(f"{name} holds NaN or inf values; herding needs finite features")
    return features if features.dtype in (torch.float32, torch.float64) else features.float()


def _herding_padded(feats: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """Herding orders for a padded batch ``feats [G, n, d]`` whose group ``g`` has ``counts[g]`` real rows.

    Returns int64 ``[G, k]``: positions within each group, ``-1`` after a group's ``counts[g]`` entries.
    """
    g, n, _ = feats.shape
    device = feats.device
    f = torch.nn.functional.normalize(feats, dim=2)  # zero rows stay zero
    valid = torch.arange(n, device=device)[None, :] < counts[:, None]
    mu = f.sum(1) / counts.clamp(min=1)[:, None].to(f.dtype)
    sq = (f * f).sum(2)
    taken = ~valid
    chosen_sum = torch.zeros_like(mu)
    order = torch.full((g, k), -1, dtype=torch.int64, device=device)
    rows = torch.arange(g, device=device)
    inf = float("inf")
    for i in range(1, k + 1):  # greedy steps (k is the quota, e.g. 20), vectorised over samples and groups
        target = mu - chosen_sum / i
        score = torch.baddbmm(sq.unsqueeze(2) / (i * i), f, target.unsqueeze(2), alpha=-2.0 / i).squeeze(2)
        score.masked_fill_(taken, inf)
        pick = torch.argmin(score, dim=1)
        live = counts >= i
        order[:, i - 1] = torch.where(live, pick, -1)
        taken[rows, pick] |= live
        chosen_sum = chosen_sum + f[rows, pick] * live[:, None].to(f.dtype)
    return order


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``min(k, N)`` picks of iCaRL herding on ``features [N, d]`` (one class), int64 indices.

    The features are L2-normalised here; the computation runs on their device in float32/float64.
    """
    features = _check_features(features)
    k = check_int(k, "k", 0)
    n = features.shape[0]
    if n == 0 or k == 0:
        return torch.empty(0, dtype=torch.int64, device=features.device)
    k = min(k, n)
    counts = torch.tensor([n], device=features.device)
    return _herding_padded(features.unsqueeze(0), counts, k)[0]


def herding_select(features: torch.Tensor, labels: torch.Tensor, quotas: torch.Tensor) -> torch.Tensor:
    """Herding within every class at once: indices of the exemplars, grouped by class (ascending), each
    group in herding order, class ``c`` contributing ``min(quotas[c], count_c)`` samples.

    Args:
        features: ``[N, d]`` features of the samples (normalised here).
        labels: int64 ``[N]`` class of every sample, in ``0..len(quotas)-1``.
        quotas: int64 ``[num_classes]`` exemplars wanted per class.
    Returns:
        int64 indices into ``features`` (on ``features.device``).
    """
    features = _check_features(features)
    quotas = torch.as_tensor(quotas, dtype=torch.int64).cpu()
    num_classes = quotas.numel()
    labels = check_labels(labels, "labels", num_classes)
    if labels.numel() != features.shape[0]:
        raise DataError(f"labels has {labels.numel()} entries but features has {features.shape[0]} rows")
    device = features.device
    counts = torch.bincount(labels, minlength=num_classes)
    take = torch.minimum(quotas.clamp(min=0), counts)
    classes = torch.nonzero(take > 0).flatten()
    if classes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[labels[order]]
    n_max = int(counts[classes].max())
    d = features.shape[1]
    groups_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_max * d))
    group_of = torch.full((num_classes,), -1, dtype=torch.int64)
    picked: list[torch.Tensor] = []
    for lo in range(0, classes.numel(), groups_per_chunk):  # chunks of many classes, bounded memory
        chunk = classes[lo : lo + groups_per_chunk]
        group_of.fill_(-1)
        group_of[chunk] = torch.arange(chunk.numel())
        member = group_of[labels[order]] >= 0
        src = order[member]
        grp = group_of[labels[src]]
        pos = rank[member]
        padded = torch.zeros(chunk.numel(), n_max, d, dtype=features.dtype, device=device)
        padded[grp.to(device), pos.to(device)] = features[src.to(device)]
        # index table from (group, position) back to the sample index
        table = torch.full((chunk.numel(), n_max), -1, dtype=torch.int64)
        table[grp, pos] = src
        k = int(take[chunk].max())
        positions = _herding_padded(padded, counts[chunk].to(device), k).cpu()
        keep = torch.arange(k)[None, :] < take[chunk][:, None]
        rows = torch.arange(chunk.numel())[:, None].expand(-1, k)
        picked.append(table[rows[keep], positions[keep]])
    return torch.cat(picked).to(device)
