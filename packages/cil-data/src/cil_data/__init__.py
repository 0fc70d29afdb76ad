"""cil-data: long-tailed class-incremental data streams, sources, exemplar memory, samplers, augmentation."""

__version__ = "0.1.0"

from .dataset import ImageDataset
from .errors import DataError, MemoryFileError
from .sources import load_embedded, load_fashion_mnist

__all__ = ["DataError", "ImageDataset", "MemoryFileError", "__version__", "load_embedded", "load_fashion_mnist"]
