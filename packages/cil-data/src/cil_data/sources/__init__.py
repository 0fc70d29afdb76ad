"""Data sources: each returns an :class:`~cil_data.dataset.ImageDataset` of uint8 tensors."""

from .embedded import load_embedded
from .fashion_mnist import load_fashion_mnist
from .idx import read_idx

__all__ = ["load_embedded", "load_fashion_mnist", "read_idx"]
