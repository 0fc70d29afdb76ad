"""Named protocols: paper setups pinned as option values, and small presets sized for a CPU.

A preset is a set of option values; options given explicitly on the command line override it.
Sources of each protocol are in the ``source`` line of its entry (``METHODS.md`` §1–§5 restates them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "Preset", "preset_names", "preset_values"]


class Preset(dict):
    """Option values of a protocol, with a one-line description and its source."""

    def __init__(self, description: str, source: str, **values: Any) -> None:
        super().__init__(values)
        self.description = description
        self.source = source


_CIFAR_LT = dict(
    data="cifar100", imbalance=100.0, profile="exp", backbone="resnet32", memory_per_class=20,
    epochs=160, lr=0.1, lr_schedule="step", lr_steps=(80, 120), lr_decay=0.1, momentum=0.9,
    weight_decay=5e-4, batch_size=128,
)
_DGR_SRC = "He, CVPR 2024 (DGR) §4.1; LT-CIL protocol of Liu et al. 2022; METHODS.md §4"
_B50 = dict(
    data="cifar100", imbalance=1.0, order="seed1993", base_classes=50, backbone="resnet32", memory_per_class=20,
    epochs=250, lr=0.1, lr_schedule="step", lr_steps=(100, 150, 200), weight_decay=2e-4, batch_size=128,
)
_BSCE_SRC = "Jodelet et al., CVIU 2022 (BalancedS-CE) §4.1; METHODS.md §1"
# JIOC's CIFAR10-LT (its Table 1): 5,000 → 206 images per class, i.e. ρ = 5000/206 (16,269 images with the
# floor of the exp profile; the paper's table says 16,271). PyCIL settings: ResNet-32, batch 128, lr 0.1.
_JIOC = dict(
    data="cifar10", imbalance=5000 / 206, profile="exp", order="seed1993", phases=5, memory_per_class=None,
    backbone="resnet32", epochs=170, lr=0.1, lr_schedule="step", lr_steps=(80, 120), weight_decay=5e-4,
    batch_size=128,
)
_JIOC_SRC = "JIOC, IJCAI 2024 §4.1 (CIFAR10-LT, T = 5, N_old fixed); iCaRL settings of PyCIL"

PRESETS: dict[str, Preset] = {
    # -- paper protocols -----------------------------------------------------------------------
    "cifar100-lt-lfs10": Preset("CIFAR-100-LT ρ=100, shuffled (seed 1993), 10 tasks of 10 classes", _DGR_SRC,
                                order="seed1993", phases=10, **_CIFAR_LT),
    "cifar100-lt-lfs20": Preset("CIFAR-100-LT ρ=100, shuffled, 20 tasks of 5 classes", _DGR_SRC,
                                order="seed1993", phases=20, **_CIFAR_LT),
    "cifar100-lt-lfh5": Preset("CIFAR-100-LT ρ=100, shuffled, 50 base classes + 5 tasks of 10", _DGR_SRC,
                               order="seed1993", base_classes=50, phases=6, **_CIFAR_LT),
    "cifar100-lt-lfh10": Preset("CIFAR-100-LT ρ=100, shuffled, 50 base classes + 10 tasks of 5", _DGR_SRC,
                                order="seed1993", base_classes=50, phases=11, **_CIFAR_LT),
    "cifar100-lt-lfs10-ordered": Preset("CIFAR-100-LT ρ=100, ordered (head first), 10 tasks of 10", _DGR_SRC,
                                        order="ordered", phases=10, **_CIFAR_LT),
    "cifar100-lt-lfs20-ordered": Preset("CIFAR-100-LT ρ=100, ordered, 20 tasks of 5", _DGR_SRC,
                                        order="ordered", phases=20, **_CIFAR_LT),
    "cifar100-lt-lfh5-ordered": Preset("CIFAR-100-LT ρ=100, ordered, 50 base + 5 tasks of 10", _DGR_SRC,
                                       order="ordered", base_classes=50, phases=6, **_CIFAR_LT),
    "cifar100-lt-lfh10-ordered": Preset("CIFAR-100-LT ρ=100, ordered, 50 base + 10 tasks of 5", _DGR_SRC,
                                        order="ordered", base_classes=50, phases=11, **_CIFAR_LT),
    "cifar100-b50-s5": Preset("CIFAR-100 (balanced), 50 base classes + 5 steps, 20 exemplars/class", _BSCE_SRC,
                              phases=6, **_B50),
    "cifar100-b50-s10": Preset("CIFAR-100, 50 base classes + 10 steps, 20 exemplars/class", _BSCE_SRC,
                               phases=11, **_B50),
    "cifar100-b50-s25": Preset("CIFAR-100, 50 base classes + 25 steps, 20 exemplars/class", _BSCE_SRC,
                               phases=26, **_B50),
    "cifar10-lt-m1000": Preset("CIFAR-10-LT (5000→206), 5 tasks of 2 classes, fixed memory 1,000", _JIOC_SRC,
                               memory_total=1000, **_JIOC),
    "cifar10-lt-m1500": Preset("CIFAR-10-LT, 5 tasks of 2 classes, fixed memory 1,500", _JIOC_SRC,
                               memory_total=1500, **_JIOC),
    "cifar10-lt-m2000": Preset("CIFAR-10-LT, 5 tasks of 2 classes, fixed memory 2,000", _JIOC_SRC,
                               memory_total=2000, **_JIOC),
    "imagenet-subset-lt": Preset(
        "ImageNet-Subset-LT ρ=100 (ImageFolder of 100 classes), 10 tasks, ResNet-18, 90 epochs", _DGR_SRC,
        data="imagefolder", image_size=224, imbalance=100.0, profile="exp", order="seed1993", phases=10,
        memory_per_class=20, backbone="resnet18", epochs=90, lr=0.1, lr_schedule="step", lr_steps=(30, 60),
        weight_decay=1e-4, batch_size=128),
    # -- small presets for a CPU ---------------------------------------------------------------
    # Reduced protocols (same structure, fewer epochs) sized for 2 CPU cores: ResNet-8, 15 epochs of batch 64
    # per phase, about 6 minutes for a glyphs100 run. At the same cost, 6 epochs of ResNet-20 left the base
    # phase under-trained (finetune: 50 % vs 61 % after phase 1 on glyphs100-lt), which then penalised every
    # distillation-heavy method through a weak teacher.
    # Fashion-MNIST-LT has about 3,900 new images per phase (glyphs100-LT: about 1,800), so 5 epochs give it about
    # 380 optimiser steps per phase (glyphs100-LT at 15 epochs: about 650) at a third of the cost of a glyphs100 run.
    "embedded-lt": Preset("the no-argument run: embedded Fashion-MNIST subset, ρ=10, 5 tasks of 2, 20/class",
                          "this project (CPU demo)", data="embedded", imbalance=10.0, order="seed1993", phases=5,
                          memory_per_class=20),
    "fmnist-lt-5x2-m1000": Preset("Fashion-MNIST-LT (Debian files) ρ=5000/206 as JIOC's CIFAR-10-LT, 5 tasks of 2, "
                                  "fixed memory 1,000", "JIOC protocol on Fashion-MNIST (CPU)",
                                  data="fashion-mnist", imbalance=5000 / 206, order="seed1993", phases=5,
                                  memory_per_class=None, memory_total=1000, backbone="resnet8", epochs=5, batch_size=64),
    "glyphs100-lt": Preset("glyphs100 npz ρ=100, shuffled (seed 1993), 10 tasks of 10, 20/class (CPU-sized)",
                           "LT-CIL LFS-10 protocol on ../shared/data/glyphs100.npz", data="npz",
                           data_root="../shared/data/glyphs100.npz", imbalance=100.0, order="seed1993", phases=10,
                           memory_per_class=20, backbone="resnet8", epochs=15, batch_size=64, augment="crop"),
    "glyphs100-lt-ordered": Preset("glyphs100 npz ρ=100, ordered (head first), 10 tasks of 10, 20/class",
                                   "LT-CIL ordered LFS-10 on glyphs100", data="npz",
                                   data_root="../shared/data/glyphs100.npz", imbalance=100.0, order="ordered",
                                   phases=10, memory_per_class=20, backbone="resnet8", epochs=15, batch_size=64,
                                   augment="crop"),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_values(name: str) -> dict[str, Any]:
    from .errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is not known: choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name])
