"""Data sources: each returns an :class:`~cil_data.dataset.ImageDataset` of uint8 tensors
(or, for image folders too large to hold, a :class:`LazyImageDataset` that decodes on access)."""

from .arrays import dataset_from_arrays, load_npz
from .cifar import load_cifar
from .embedded import load_embedded
from .fashion_mnist import load_fashion_mnist
from .idx import read_idx
from .image_folder import (
    ImageFolderSplit,
    LazyImageDataset,
    estimate_image_folder_bytes,
    load_image_folder,
    open_image_folder,
)

__all__ = [
    "ImageFolderSplit",
    "LazyImageDataset",
    "dataset_from_arrays",
    "estimate_image_folder_bytes",
    "load_cifar",
    "load_embedded",
    "load_fashion_mnist",
    "load_image_folder",
    "load_npz",
    "open_image_folder",
    "read_idx",
]
