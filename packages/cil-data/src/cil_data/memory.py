"""The exemplar memory: a small set of stored training images of the classes seen so far.

Each phase, :meth:`ExemplarMemory.update` receives every training sample of the phase's *new* classes,
shrinks the old classes to their new quotas (keeping the first ``k`` of each class's stored order) and
selects exemplars of the new classes (iCaRL herding on given features, or uniformly at random).
Storage order: grouped by incremental label (ascending), each class in selection order — which is what
makes "keep the first k" the herding-consistent shrink.

The memory is saved as an HDF5 file that is replaced atomically and carries a format tag, a schema
version and a SHA-256 checksum; :meth:`ExemplarMemory.load` refuses corrupt, foreign or other-schema
files with :class:`~cil_data.MemoryFileError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from ._checks import check_int, check_labels, check_permutation
from ._grouping import rank_within_class, shuffled_class_groups
from ._random import as_generator
from .atomic import atomic_replace
from .budget import MemoryBudget
from .dataset import check_images_and_labels
from .errors import DataError, MemoryFileError
from .herding import herding_select

__all__ = ["FILE_FORMAT", "SCHEMA_VERSION", "SELECTIONS", "ExemplarMemory"]

FILE_FORMAT = "cil-exemplar-memory"
SCHEMA_VERSION = 1
SELECTIONS = ("herding", "random")
_DATASETS = ("images", "labels", "original_counts", "class_order")


def _checksum(meta: dict[str, object], arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the canonical JSON of the metadata and the shape, dtype and bytes of every array."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in _DATASETS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")  # no copy
    return h.hexdigest()


class ExemplarMemory:
    """Exemplars of the seen classes (uint8 images on the CPU, incremental labels).

    Args:
        budget: :meth:`MemoryBudget.per_class` (growing) or :meth:`MemoryBudget.total` (fixed).
        selection: ``"herding"`` (needs features in :meth:`update`) or ``"random"``.
        seed: seeds random selection when :meth:`update` gets no generator (the generator is then
            ``torch.Generator().manual_seed(seed * 1_000_003 + num_seen)``, deterministic per phase).

    Attributes:
        images: uint8 ``[M, C, H, W]``; labels: int64 ``[M]`` (incremental labels, ascending).
        original_counts: int64 ``[num_classes]`` training counts ``N_c`` of every seen class.
        class_order: the scenario's class order (original label of each incremental class), set by the
            caller and stored in the file so that a resumed run can check it.
        added: int64 ``[K]``: the rows of the last :meth:`update`'s ``images`` that it added, in storage
            order; they are the memory's last ``K`` rows (a caller that extracted features of those images
            for herding can reuse them for the new exemplars). Not saved; empty after :meth:`load`.
    """

    def __init__(self, budget: MemoryBudget, selection: str = "herding", *, seed: int = 0) -> None:
        if not isinstance(budget, MemoryBudget):
            raise DataError(f"budget must be a MemoryBudget (MemoryBudget.per_class(20) / .total(2000)), got {budget!r}")
        if selection not in SELECTIONS:
            raise DataError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
        self.budget = budget
        self.selection = selection
        self.seed = check_int(seed, "seed", 0)
        self.images = torch.empty(0, 0, 0, 0, dtype=torch.uint8)
        self.labels = torch.empty(0, dtype=torch.int64)
        self.original_counts = torch.empty(0, dtype=torch.int64)
        self.class_order: list[int] = []
        self.added = torch.empty(0, dtype=torch.int64)

    # ------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes the memory has seen (``len(original_counts)``)."""
        return int(self.original_counts.numel())

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self, num_classes: int | None = None) -> torch.Tensor:
        """Exemplars held per incremental class, int64 ``[num_classes]`` (default: the seen classes)."""
        n = self.num_classes if num_classes is None else check_int(num_classes, "num_classes", 0)
        counts = torch.bincount(self.labels, minlength=n)
        if counts.numel() > n:
            raise DataError(f"num_classes={n} is too small: the memory holds labels up to {counts.numel() - 1}")
        return counts

    def update(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        features: torch.Tensor | None,
        num_seen: int,
        generator: torch.Generator | None = None,
    ) -> None:
        """Add the new classes ``num_classes..num_seen-1`` and shrink the old ones to the new quotas.

        Args:
            images: uint8 ``[N, C, H, W]``: every training sample of the new classes (any device).
            labels: int64 ``[N]`` incremental labels, each in ``num_classes..num_seen-1``, every new class present.
            features: ``[N, d]`` features of those samples for herding (normalised here); ignored by
                random selection (may be None).
            num_seen: number of classes seen after this phase.
            generator: randomness of ``selection="random"`` (default: derived from ``seed`` and ``num_seen``).
        """
        num_old = self.num_classes
        num_seen = check_int(num_seen, "num_seen", 1)
        if num_seen <= num_old:
            raise DataError(f"num_seen={num_seen} must exceed the {num_old} classes already in the memory")
        labels_cpu = check_labels(labels, "labels", num_seen)
        check_images_and_labels(images, labels.to(torch.int64), num_seen, "memory update")
        if len(self) and tuple(images.shape[1:]) != tuple(self.images.shape[1:]):
            raise DataError(f"images have shape {tuple(images.shape[1:])} per sample but the memory holds {tuple(self.images.shape[1:])}")
        if labels_cpu.numel() and int(labels_cpu.min()) < num_old:
            raise DataError(
                f"labels must be the new classes {num_old}..{num_seen - 1} only; got label {int(labels_cpu.min())} "
                "(old classes are already in the memory)"
            )
        new_counts = torch.bincount(labels_cpu - num_old, minlength=num_seen - num_old)
        empty = (torch.nonzero(new_counts == 0).flatten() + num_old).tolist()
        if empty:
            raise DataError(f"new class(es) {empty[:10]} have no sample in this update; pass every sample of classes {num_old}..{num_seen - 1}")
        if self.selection == "herding":
            if features is None:
                raise DataError('selection="herding" needs features [N, d] of the new samples; pass them or use selection="random"')
            if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != labels_cpu.numel():
                shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise DataError(f"features must have shape [N, d] with N = {labels_cpu.numel()} (one row per image), got {shape}")

        quotas = torch.tensor(self.budget.quotas(torch.cat([self.class_counts(num_old), new_counts])), dtype=torch.int64)
        keep_old = rank_within_class(self.labels, max(num_old, 1)) < quotas[self.labels]
        new_quotas = quotas[num_old:]
        if self.selection == "herding":
            assert features is not None
            chosen = herding_select(features, (labels_cpu - num_old).to(features.device), new_quotas).cpu()
        else:
            gen = generator if generator is not None else as_generator(self.seed * 1_000_003 + num_seen)
            order, rank = shuffled_class_groups(labels_cpu - num_old, num_seen - num_old, gen)
            chosen = order[rank < new_quotas[labels_cpu[order] - num_old]]
        new_images = images[chosen.to(images.device)].cpu()
        old_images = self.images[keep_old] if len(self) else new_images[:0]
        self.images = torch.cat([old_images, new_images])
        self.labels = torch.cat([self.labels[keep_old], labels_cpu[chosen]])
        self.original_counts = torch.cat([self.original_counts, new_counts])
        self.added = chosen.to(torch.int64)

    # ------------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, object]:
        return {
            "format": FILE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "budget": self.budget.to_dict(),
            "selection": self.selection,
            "seed": self.seed,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "images": self.images.contiguous().numpy(),
            "labels": self.labels.numpy().astype("<i8"),
            "original_counts": self.original_counts.numpy().astype("<i8"),
            "class_order": np.asarray(self.class_order, dtype="<i8"),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the memory to ``path`` atomically (new file, fsync, ``os.replace``, fsync the folder)."""
        if self.class_order:
            check_permutation(self.class_order, len(self.class_order), "class_order")
        meta, arrays = self._meta(), self._arrays()
        digest = _checksum(meta, arrays)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FILE_FORMAT
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["meta"] = json.dumps(meta, sort_keys=True)
                f.attrs["sha256"] = digest
                for name, array in arrays.items():
                    f.create_dataset(name, data=array)

        atomic_replace(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expect_class_order: Sequence[int] | None = None) -> "ExemplarMemory":
        """Read a memory written by :meth:`save`; refuse corrupt, foreign or mismatching files.

        ``expect_class_order``: if given, the stored class order must equal it (a resumed run must use the
        order the memory was built with).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no exemplar memory file at {path}")
        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
                if fmt != FILE_FORMAT:
                    raise MemoryFileError(f"{path} is not a cil exemplar-memory file (format tag {fmt!r}, expected {FILE_FORMAT!r})")
                version = f.attrs.get("schema_version")
                if version != SCHEMA_VERSION:
                    raise MemoryFileError(
                        f"{path} has memory schema version {version}, this cil-data reads version {SCHEMA_VERSION}; "
                        "rebuild the memory with this version (rerun the phase) or use the matching cil-data"
                    )
                meta_text = f.attrs["meta"]
                digest = f.attrs["sha256"]
                missing = [name for name in _DATASETS if name not in f]
                if missing:
                    raise MemoryFileError(f"{path} lacks the dataset(s) {missing}; the file is corrupt")
                arrays = {name: f[name][()] for name in _DATASETS}
        except MemoryFileError:
            raise
        except Exception as exc:  # h5py raises OSError, KeyError, ValueError, ... on damaged files
            raise MemoryFileError(f"{path} cannot be read as an exemplar memory ({type(exc).__name__}: {exc}); the file is corrupt") from exc
        try:
            meta = json.loads(meta_text)
        except (TypeError, ValueError) as exc:
            raise MemoryFileError(f"{path}: the metadata is not valid JSON; the file is corrupt") from exc
        if _checksum(meta, arrays) != digest:
            raise MemoryFileError(f"{path}: checksum mismatch, the file is corrupt (was it modified or partly copied?)")
        try:
            budget = MemoryBudget(**meta["budget"])
            mem = cls(budget, meta["selection"], seed=meta["seed"])
        except (KeyError, TypeError, DataError) as exc:
            raise MemoryFileError(f"{path}: invalid metadata {meta!r} ({exc})") from exc
        mem.images = torch.from_numpy(arrays["images"].astype(np.uint8, copy=False))
        mem.labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        mem.original_counts = torch.from_numpy(arrays["original_counts"].astype(np.int64))
        mem.class_order = [int(v) for v in arrays["class_order"]]
        mem._check_consistent(path)
        if expect_class_order is not None and list(map(int, expect_class_order)) != mem.class_order:
            raise MemoryFileError(
                f"{path} was built with class order {mem.class_order[:10]}{'...' if len(mem.class_order) > 10 else ''}, "
                f"but this run expects {list(expect_class_order)[:10]}...; use the same --order/seed or start a new run"
            )
        return mem

    def _check_consistent(self, path: Path) -> None:
        m = len(self)
        if self.images.dim() != 4 or self.images.shape[0] != m:
            raise MemoryFileError(f"{path}: images {tuple(self.images.shape)} do not match {m} labels")
        if m and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise MemoryFileError(f"{path}: labels exceed the {self.num_classes} recorded classes")
        if m > 1 and bool((self.labels[1:] < self.labels[:-1]).any()):
            raise MemoryFileError(f"{path}: labels are not grouped by class")

    # ------------------------------------------------------------------------------------------
    def equals(self, other: "ExemplarMemory") -> bool:
        """True if both memories hold the same state (budget, selection, seed, data, counts, order)."""
        return (
            isinstance(other, ExemplarMemory)
            and self.budget == other.budget
            and self.selection == other.selection
            and self.seed == other.seed
            and self.class_order == other.class_order
            and self.images.shape == other.images.shape
            and torch.equal(self.images, other.images)
            and torch.equal(self.labels, other.labels)
            and torch.equal(self.original_counts, other.original_counts)
        )

    def __repr__(self) -> str:
        return (
            f"ExemplarMemory({self.budget.kind}={self.budget.size}, {self.selection}, classes={self.num_classes}, "
            f"exemplars={len(self)})"
        )
