"""From options to a class-incremental stream: data source → long tail → class order → phases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import cil_data
from cil_data import DataError, ImageDataset, IncrementalScenario, LazyImageDataset

from .config import RunConfig
from .errors import ConfigError

__all__ = ["IN_MEMORY_LIMIT", "build_scenario", "load_dataset"]

# image folders whose decoded uint8 pixels would exceed this are decoded on access instead
IN_MEMORY_LIMIT = 4 * 2**30


def load_dataset(cfg: RunConfig) -> ImageDataset | LazyImageDataset:
    """The data set named by ``--data`` (and ``--data-root``). Image folders are decoded into memory when
    they fit in :data:`IN_MEMORY_LIMIT` bytes, else decoded on access, phase by phase."""
    root = cfg.data_root
    try:
        if cfg.data == "embedded":
            return cil_data.load_embedded()
        if cfg.data == "fashion-mnist":
            return cil_data.load_fashion_mnist(root)
        if cfg.data in ("cifar10", "cifar100"):
            return cil_data.load_cifar(root, num_classes=10 if cfg.data == "cifar10" else 100)
        if cfg.data == "npz":
            if not Path(root).is_file():
                raise ConfigError(
                    f"--data-root {root!r}: no such .npz file. The glyphs100 presets expect ../shared/data/glyphs100.npz "
                    "(developers' checkouts only); pass the path of your own npz with keys x_train, y_train, x_test, y_test."
                )
            return cil_data.load_npz(root)
        if cfg.data == "imagefolder":
            workers = min(16, os.cpu_count() or 1)
            if cil_data.estimate_image_folder_bytes(root, image_size=cfg.image_size) <= IN_MEMORY_LIMIT:
                return cil_data.load_image_folder(root, image_size=cfg.image_size, num_workers=workers)
            return cil_data.open_image_folder(root, image_size=cfg.image_size, num_workers=workers)
    except DataError as exc:
        where = f" (--data-root {root})" if root and str(Path(root).name) not in str(exc) else ""
        raise ConfigError(f"--data {cfg.data}{where}: {exc}") from exc
    raise ConfigError(f"--data {cfg.data!r} is not known")  # unreachable: validated by RunConfig


def build_scenario(cfg: RunConfig, dataset: ImageDataset) -> IncrementalScenario:
    """Long-tailed subset (ρ, profile over the original label ranking), class order and phase split."""
    c = dataset.num_classes
    try:
        train_idx = None
        if cfg.imbalance > 1.0 or cfg.images_per_class is not None:
            train_idx = cil_data.long_tail_indices(
                dataset.train_labels, cfg.imbalance, profile=cfg.profile, seed=cfg.lt_seed, n_max=cfg.images_per_class
            )
        order = cil_data.class_order(list(cfg.order) if isinstance(cfg.order, tuple) else cfg.order, c)
        increments = cil_data.phase_increments(
            c, num_phases=None if cfg.increments else cfg.phases, base_classes=cfg.base_classes,
            increments=list(cfg.increments) if cfg.increments else None,
        )
        return IncrementalScenario(dataset, order, increments, train_indices=train_idx)
    except DataError as exc:
        raise ConfigError(_option_for(str(exc)) + str(exc)) from exc


def _option_for(message: str) -> str:
    m = message.lower()
    if "increment" in m or "phase" in m or "base" in m:
        return "--phases/--base-classes/--increments: "
    if "rho" in m or "ρ" in m or "imbalance" in m:
        return "--imbalance: "
    if "order" in m:
        return "--order: "
    return ""
