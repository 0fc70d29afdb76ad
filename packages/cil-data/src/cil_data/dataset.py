"""The in-memory image data set every source returns: uint8 images and int64 labels as tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .augment import check_augment_policy
from .errors import DataError

__all__ = ["ImageDataset", "check_images_and_labels"]


def check_images_and_labels(images: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Validate one split: ``images`` uint8 ``[N, C, H, W]`` with C in {1, 3}, ``labels`` int64 ``[N]`` in range.

    Raises :class:`DataError` naming ``what`` (e.g. ``"train"``) and the offending value.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{what}: images and labels must be torch tensors, got {type(images).__name__} and {type(labels).__name__}")
    if images.dtype != torch.uint8:
        raise DataError(f"{what}: images must be uint8 (0..255), got dtype {images.dtype}; convert with (x * 255).round().to(torch.uint8)")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"{what}: images must have shape [N, C, H, W] with C = 1 (grey) or 3 (RGB), got {tuple(images.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{what}: labels must have shape [N] = [{images.shape[0]}], got {tuple(labels.shape)}")
    if labels.dtype != torch.int64:
        raise DataError(f"{what}: labels must be int64, got {labels.dtype}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise DataError(f"{what}: label {bad} is out of range: labels must lie in 0..{num_classes - 1} ({num_classes} classes)")


@dataclass
class ImageDataset:
    """A classification data set held in memory.

    Attributes:
        name: short name, e.g. ``"fashion-mnist"``.
        train_images, test_images: uint8 tensors ``[N, C, H, W]``.
        train_labels, test_labels: int64 tensors ``[N]`` with values in ``0..num_classes-1``.
        class_names: one name per class (index = label).
        mean, std: per-channel normalisation statistics on the 0..1 scale.
        augment: the training augmentation the data calls for (:data:`~cil_data.AUGMENT_POLICIES`):
            ``"crop,flip"`` for natural images, ``"crop"`` where a mirror image is another class (characters).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.5,))
    augment: str = "crop,flip"

    def __post_init__(self) -> None:
        check_augment_policy(self.augment, f"{self.name}: augment")
        n = len(self.class_names)
        if n < 1:
            raise DataError(f"{self.name}: class_names is empty; a data set needs at least one class")
        check_images_and_labels(self.train_images, self.train_labels, n, f"{self.name} train")
        check_images_and_labels(self.test_images, self.test_labels, n, f"{self.name} test")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train images {tuple(self.train_images.shape[1:])} and test images "
                f"{tuple(self.test_images.shape[1:])} differ in shape"
            )
        c = self.train_images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise DataError(f"{self.name}: mean/std need {c} values (one per channel), got {self.mean} / {self.std}")
        counts = torch.bincount(self.train_labels, minlength=n)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            shown = ", ".join(f"{i} ({self.class_names[i]})" for i in empty[:5])
            raise DataError(f"{self.name}: class(es) {shown} have no training image; remove them or add data")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    def images(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images of ``split`` (``"train"`` or ``"test"``) at ``indices``."""
        return getattr(self, f"{split}_images")[indices]

    def train_counts(self) -> torch.Tensor:
        """Number of training images per class (int64, ``[num_classes]``)."""
        return torch.bincount(self.train_labels, minlength=self.num_classes)

    def __repr__(self) -> str:  # short: the tensors are large
        return (
            f"ImageDataset({self.name!r}, classes={self.num_classes}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, image_shape={self.image_shape})"
        )
