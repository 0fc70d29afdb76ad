"""ImageFolder trees (ImageNet-Subset, TinyImageNet, Food-101, …) decoded with Pillow.

Layout::

    ROOT/train/<class name>/**/<image>.{jpg,jpeg,png,bmp,gif,webp,tif,tiff,ppm,pgm}
    ROOT/val/<class name>/…      (or ROOT/test/<class name>/…)

Classes are the sorted sub-folder names of ``train`` (label = position); test folders must use the same
names. Images are converted to RGB (or grey with ``mode="L"``) and resized to ``image_size ×
image_size``: by default the shorter side is scaled to ``image_size`` and the centre cropped
(``resize="center-crop"``), or the image is scaled to the square (``"stretch"``).

:func:`load_image_folder` decodes everything into uint8 tensors in memory after checking the estimated
size against ``max_bytes``; :func:`open_image_folder` returns a lazy data set whose splits are
``torch.utils.data.Dataset`` objects decoding on access (for trees too large to hold; feed them to a
``DataLoader``). Pillow is imported only when images are decoded (``pip install pillow``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_int
from ..dataset import ImageDataset, check_images_and_labels
from ..errors import DataError, MissingDependencyError
from ..stats import channel_stats

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSplit",
    "LazyImageDataset",
    "estimate_image_folder_bytes",
    "load_image_folder",
    "open_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MODES = {"RGB": 3, "L": 1}
RESIZES = ("center-crop", "stretch")
DEFAULT_MAX_BYTES = 4 << 30
# ImageNet statistics: the default of lazy trees, whose pixels are not all read up front.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "reading image folders needs Pillow, which is not installed: pip install pillow "
            "(torchvision installs it too); cil-data does not depend on it otherwise"
        ) from exc
    return Image


@dataclass(frozen=True)
class _Tree:
    class_names: list[str]
    train_files: list[Path]
    train_labels: torch.Tensor
    test_files: list[Path]
    test_labels: torch.Tensor
    test_split: str


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _split_files(split_dir: Path, class_index: dict[str, int], split: str) -> tuple[list[Path], torch.Tensor]:
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if class_dir.name not in class_index:
            raise DataError(
                f"{class_dir}: class folder {class_dir.name!r} of the {split} split has no counterpart in train/; "
                "both splits must use the same class folder names"
            )
        found = _image_files(class_dir)
        files += found
        labels += [class_index[class_dir.name]] * len(found)
    return files, torch.tensor(labels, dtype=torch.int64)


def _scan(root: str | os.PathLike[str], test_split: str | None) -> _Tree:
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"image folder {root} has no train/ sub-folder; expected {root}/train/<class>/<images> and "
            f"{root}/val/<class>/<images> (or test/)"
        )
    if test_split is None:
        test_split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
        if test_split is None:
            raise DataError(f"image folder {root} has neither val/ nor test/; put the test images in {root}/val/<class>/")
    elif not (root / test_split).is_dir():
        raise DataError(f"image folder {root} has no {test_split}/ sub-folder")
    class_names = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_names:
        raise DataError(f"{train_dir} has no class sub-folders; expected {train_dir}/<class name>/<images>")
    index = {name: i for i, name in enumerate(class_names)}
    train_files, train_labels = _split_files(train_dir, index, "train")
    counts = torch.bincount(train_labels, minlength=len(class_names))
    empty = [class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DataError(f"{train_dir}: class folder(s) {empty[:5]} hold no image ({', '.join(IMAGE_EXTENSIONS)}); remove them or add images")
    test_files, test_labels = _split_files(root / test_split, index, test_split)
    return _Tree(class_names, train_files, train_labels, test_files, test_labels, test_split)


def _check_options(image_size: int, mode: str, resize: str) -> int:
    size = check_int(image_size, "image_size", 1)
    if mode not in MODES:
        raise DataError(f"mode must be one of {', '.join(MODES)} (RGB or grey), got {mode!r}")
    if resize not in RESIZES:
        raise DataError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    return size


def decode_image(path: str | os.PathLike[str], image_size: int, mode: str = "RGB", resize: str = "center-crop") -> np.ndarray:
    """One image file as uint8 ``[C, S, S]`` (see the module docstring for ``mode`` and ``resize``)."""
    image_mod = _require_pil()
    try:
        with image_mod.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            if resize == "center-crop":
                scale = image_size / min(w, h)
                nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
                im = im.resize((nw, nh), image_mod.BILINEAR)
                left, top = (nw - image_size) // 2, (nh - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            else:
                im = im.resize((image_size, image_size), image_mod.BILINEAR)
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports broken files with these
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file") from exc
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _decode_all(files: Sequence[Path], size: int, mode: str, resize: str, num_workers: int) -> torch.Tensor:
    out = np.empty((len(files), MODES[mode], size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(files[i], size, mode, resize)

    if num_workers > 0 and len(files) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:  # Pillow releases the GIL while decoding
            list(pool.map(work, range(len(files))))
    else:
        for i in range(len(files)):
            work(i)
    return torch.from_numpy(out)


def estimate_image_folder_bytes(
    root: str | os.PathLike[str], image_size: int = 32, mode: str = "RGB", test_split: str | None = None
) -> int:
    """Bytes that :func:`load_image_folder` would hold: ``(#train + #test) · C · S²`` (uint8) + labels."""
    size = _check_options(image_size, mode, "center-crop")
    tree = _scan(root, test_split)
    n = len(tree.train_files) + len(tree.test_files)
    return n * (MODES[mode] * size * size + 8)


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 32,
    *,
    mode: str = "RGB",
    resize: str = "center-crop",
    test_split: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    num_workers: int = 0,
    name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageDataset:
    """Decode a whole image-folder tree into an in-memory :class:`ImageDataset` (uint8).

    Args:
        root: folder with ``train/`` and ``val/`` or ``test/`` (``test_split`` picks one; default val, then test).
        image_size: side of the square images held.
        mode: ``"RGB"`` or ``"L"`` (grey). resize: ``"center-crop"`` or ``"stretch"``.
        max_bytes: refuse (with a hint to :func:`open_image_folder`) trees whose estimated size exceeds it.
        num_workers: decoding threads (0 = in this thread).
        mean, std: normalisation statistics; default: exact statistics of the decoded training images.
    """
    size = _check_options(image_size, mode, resize)
    tree = _scan(root, test_split)
    need = (len(tree.train_files) + len(tree.test_files)) * (MODES[mode] * size * size + 8)
    if need > check_int(max_bytes, "max_bytes", 0):
        raise DataError(
            f"{root}: {len(tree.train_files) + len(tree.test_files)} images at {MODES[mode]}×{size}×{size} need "
            f"{need / 2**30:.2f} GiB in memory, more than max_bytes={max_bytes / 2**30:.2f} GiB; use "
            "cil_data.open_image_folder(...) to decode on access through a DataLoader, or raise max_bytes"
        )
    workers = check_int(num_workers, "num_workers", 0)
    train = _decode_all(tree.train_files, size, mode, resize, workers)
    test = _decode_all(tree.test_files, size, mode, resize, workers)
    if mean is None or std is None:
        stat_mean, stat_std = channel_stats(train)
        mean = stat_mean if mean is None else mean
        std = stat_std if std is None else std
    return ImageDataset(
        name=name or Path(root).name,
        train_images=train,
        train_labels=tree.train_labels,
        test_images=test,
        test_labels=tree.test_labels,
        class_names=tree.class_names,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


class ImageFolderSplit(Dataset):
    """One split of an image folder that decodes on access: ``ds[i] = (uint8 [C, S, S], label)``."""

    def __init__(self, files: Sequence[Path], labels: torch.Tensor, image_size: int, mode: str = "RGB",
                 resize: str = "center-crop") -> None:
        self.image_size = _check_options(image_size, mode, resize)
        self.mode, self.resize = mode, resize
        self.files = list(files)
        self.labels = labels
        if self.labels.numel() != len(self.files):
            raise DataError(f"{len(self.files)} files but {self.labels.numel()} labels")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(decode_image(self.files[i], self.image_size, self.mode, self.resize))
        return image, int(self.labels[i])

    def decode(self, indices: Sequence[int] | torch.Tensor, num_workers: int = 0) -> torch.Tensor:
        """The images at ``indices`` as one uint8 tensor ``[n, C, S, S]`` (e.g. a memory update's input)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return _decode_all([self.files[i] for i in idx], self.image_size, self.mode, self.resize, num_workers)


@dataclass
class LazyImageDataset:
    """An image folder whose splits decode on access; usable wherever a scenario needs labels only.

    ``train`` / ``test`` are ``torch.utils.data.Dataset`` objects; index them with a phase's indices
    (``torch.utils.data.Subset(ds.train, phase.train_indices)``) and load through a ``DataLoader``.
    """

    name: str
    train: ImageFolderSplit
    test: ImageFolderSplit
    class_names: list[str]
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)
    augment: str = "crop,flip"
    num_workers: int = 0

    def images(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        """Decode the images of ``split`` (``"train"`` or ``"test"``) at ``indices`` (``num_workers`` threads)."""
        return getattr(self, split).decode(indices, num_workers=self.num_workers)

    @property
    def train_labels(self) -> torch.Tensor:
        return self.train.labels

    @property
    def test_labels(self) -> torch.Tensor:
        return self.test.labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return MODES[self.train.mode], self.train.image_size, self.train.image_size

    def train_counts(self) -> torch.Tensor:
        return torch.bincount(self.train_labels, minlength=self.num_classes)


def open_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 224,
    *,
    mode: str = "RGB",
    resize: str = "center-crop",
    test_split: str | None = None,
    name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int = 0,
) -> LazyImageDataset:
    """A lazy view of an image folder (nothing is decoded now); ``mean``/``std`` default to ImageNet's
    (grey: their average) since the pixels are not read up front. ``num_workers`` threads decode the images
    that :meth:`LazyImageDataset.images` is asked for."""
    size = _check_options(image_size, mode, resize)
    tree = _scan(root, test_split)
    c = MODES[mode]
    if mean is None:
        mean = IMAGENET_MEAN if c == 3 else (sum(IMAGENET_MEAN) / 3,)
    if std is None:
        std = IMAGENET_STD if c == 3 else (sum(IMAGENET_STD) / 3,)
    if len(mean) != c or len(std) != c:
        raise DataError(f"mean/std need {c} values for mode {mode}, got {mean} / {std}")
    for split, labels in (("train", tree.train_labels), (tree.test_split, tree.test_labels)):
        check_images_and_labels(torch.empty(labels.numel(), c, 1, 1, dtype=torch.uint8), labels, len(tree.class_names), split)
    return LazyImageDataset(
        name=name or Path(root).name,
        train=ImageFolderSplit(tree.train_files, tree.train_labels, size, mode, resize),
        test=ImageFolderSplit(tree.test_files, tree.test_labels, size, mode, resize),
        class_names=tree.class_names,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        num_workers=check_int(num_workers, "num_workers", 0),
    )
