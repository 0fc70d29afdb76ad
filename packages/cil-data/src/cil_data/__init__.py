"""cil-data: long-tailed class-incremental data streams, sources, exemplar memory, samplers, augmentation."""

__version__ = "0.2.0"

from .atomic import atomic_replace, atomic_write_bytes
from .augment import AUGMENT_POLICIES, BatchAugment, check_augment_policy
from .budget import MemoryBudget
from .dataset import ImageDataset, check_images_and_labels
from .errors import DataError, MemoryFileError, MissingDependencyError
from .herding import herding_order, herding_select
from .longtail import long_tail_counts, long_tail_indices
from .memory import ExemplarMemory
from .samplers import (
    RatioPreservingSampler,
    ValidationSplit,
    balanced_validation_split,
    class_balanced_indices,
    validation_split_at_most,
)
from .scenario import IncrementalScenario, Phase, class_order, phase_increments, seed1993_order
from .sources import (
    ImageFolderSplit,
    LazyImageDataset,
    dataset_from_arrays,
    estimate_image_folder_bytes,
    load_cifar,
    load_embedded,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    open_image_folder,
    read_idx,
)
from .stats import channel_stats

__all__ = [
    "AUGMENT_POLICIES",
    "BatchAugment",
    "DataError",
    "ExemplarMemory",
    "ImageDataset",
    "ImageFolderSplit",
    "IncrementalScenario",
    "LazyImageDataset",
    "MemoryBudget",
    "MemoryFileError",
    "MissingDependencyError",
    "Phase",
    "RatioPreservingSampler",
    "ValidationSplit",
    "__version__",
    "atomic_replace",
    "atomic_write_bytes",
    "balanced_validation_split",
    "check_augment_policy",
    "channel_stats",
    "check_images_and_labels",
    "class_balanced_indices",
    "class_order",
    "dataset_from_arrays",
    "estimate_image_folder_bytes",
    "herding_order",
    "herding_select",
    "load_cifar",
    "load_embedded",
    "load_fashion_mnist",
    "load_image_folder",
    "load_npz",
    "long_tail_counts",
    "long_tail_indices",
    "open_image_folder",
    "phase_increments",
    "read_idx",
    "seed1993_order",
    "validation_split_at_most",
]
