"""Named protocols: paper setups pinned as option values, and small presets sized for a CPU.

A preset is a set of option values; options given explicitly on the command line override it. A protocol
may also pin a method's own schedule (``per_method``): the papers train LUCIR and PODNet with their own
epochs, schedules and loss weights on the same split, and those values apply when that method runs.
Sources of each protocol are in the ``source`` line of its entry (``METHODS.md`` §1–§11 restates them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "Preset", "preset_names", "preset_values"]


class Preset(dict):
    """Option values of a protocol, with a one-line description, its source and per-method values."""

    def __init__(self, description: str, source: str, per_method: dict[str, dict[str, Any]] | None = None,
                 **values: Any) -> None:
        super().__init__(values)
        self.description = description
        self.source = source
        self.per_method = per_method or {}


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
_BSCE_SRC = "Jodelet et al., CVIU 2022 (BalancedS-CE) §4.1; METHODS.md §1, §7, §8"
# LUCIR's and PODNet's own CIFAR schedules (official scripts; shared/methods/cosine-family.md §1.3, §2.3),
# shared by their BalancedS-CE variants (the paper changes the loss only)
_LUCIR_CIFAR = dict(epochs=160, lr=0.1, lr_schedule="step", lr_steps=(80, 120), weight_decay=5e-4, batch_size=128,
                    lucir_lambda_base=5.0)
_PODNET_CIFAR = dict(epochs=160, lr=0.1, lr_schedule="cosine", lr_steps=None, weight_decay=5e-4, batch_size=128,
                     podnet_flat=1.0, podnet_spatial=3.0, podnet_finetune_lr=0.05)
_COSINE_CIFAR = {**{m: _LUCIR_CIFAR for m in ("lucir", "lucir-bsce", "lucir-bsce-relaxed")},
                 **{m: _PODNET_CIFAR for m in ("podnet", "podnet-bsce", "podnet-bsce-relaxed")}}
_LUCIR_IMAGENET = dict(epochs=90, lr=0.1, lr_schedule="step", lr_steps=(30, 60), weight_decay=1e-4, batch_size=128,
                       lucir_lambda_base=10.0)
_PODNET_IMAGENET = dict(epochs=90, lr=0.05, lr_schedule="cosine", lr_steps=None, weight_decay=5e-4, batch_size=64,
                        podnet_flat=10.0, podnet_spatial=8.0, podnet_finetune_lr=0.01)
_COSINE_IMAGENET = {**{m: _LUCIR_IMAGENET for m in ("lucir", "lucir-bsce", "lucir-bsce-relaxed")},
                    **{m: _PODNET_IMAGENET for m in ("podnet", "podnet-bsce", "podnet-bsce-relaxed")}}
_IMAGENET_B50 = dict(
    data="imagefolder", image_size=224, imbalance=1.0, order="seed1993", base_classes=50, backbone="resnet18",
    memory_per_class=20, epochs=100, lr=0.1, lr_schedule="step", lr_steps=(30, 60, 80, 90), weight_decay=1e-4,
    batch_size=256,
)
# JIOC's CIFAR10-LT (its Table 1): 5,000 → 206 images per class, i.e. ρ = 5000/206 (16,269 images with the
# floor of the exp profile; the paper's table says 16,271). PyCIL settings: ResNet-32, batch 128, lr 0.1.
_JIOC = dict(
    data="cifar10", imbalance=5000 / 206, profile="exp", order="seed1993", phases=5, memory_per_class=None,
    backbone="resnet32", epochs=170, lr=0.1, lr_schedule="step", lr_steps=(80, 120), weight_decay=5e-4,
    batch_size=128,
)
_JIOC_SRC = "JIOC, IJCAI 2024 §4.1 (CIFAR10-LT, T = 5, N_old fixed); iCaRL settings of PyCIL"

_GLYPHS_B50 = dict(data="npz", data_root="../shared/data/glyphs100.npz", imbalance=1.0, images_per_class=300,
                   order="seed1993", base_classes=50, phases=6, memory_per_class=20, backbone="resnet8", epochs=5,
                   base_epochs=10, batch_size=64, augment="crop")
_COSINE_CPU = {**{m: dict(lr_schedule="step", lr_steps=(3, 4)) for m in ("lucir", "lucir-bsce", "lucir-bsce-relaxed")},
               **{m: dict(lr_schedule="cosine", lr_steps=None) for m in ("podnet", "podnet-bsce",
                                                                          "podnet-bsce-relaxed")}}
# On the step-budget presets every method gets the same steps and the default cosine schedule (PODNet's own),
# except LUCIR, whose paper divides the rate by 10 at epochs 80 and 120 of 160: the same fractions of the
# default 30 epochs, scaled to each phase's budget by the loop.
_LUCIR_FAIR = {m: dict(lr_schedule="step", lr_steps=(15, 22)) for m in ("lucir", "lucir-bsce", "lucir-bsce-relaxed")}

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
                              _COSINE_CIFAR, phases=6, **_B50),
    "cifar100-b50-s10": Preset("CIFAR-100, 50 base classes + 10 steps, 20 exemplars/class", _BSCE_SRC,
                               _COSINE_CIFAR, phases=11, **_B50),
    "cifar100-b50-s25": Preset("CIFAR-100, 50 base classes + 25 steps, 20 exemplars/class", _BSCE_SRC,
                               _COSINE_CIFAR, phases=26, **_B50),
    "cifar100-b50-s5-m0": Preset("CIFAR-100, 50 base classes + 5 steps, no memory (Relaxed BalancedS-CE, Table 3)",
                                 _BSCE_SRC, _COSINE_CIFAR, phases=6, **{**_B50, "memory_per_class": 0}),
    "cifar100-b50-s10-m0": Preset("CIFAR-100, 50 base classes + 10 steps, no memory", _BSCE_SRC, _COSINE_CIFAR,
                                  phases=11, **{**_B50, "memory_per_class": 0}),
    "cifar100-b50-s25-m0": Preset("CIFAR-100, 50 base classes + 25 steps, no memory", _BSCE_SRC, _COSINE_CIFAR,
                                  phases=26, **{**_B50, "memory_per_class": 0}),
    "imagenet-subset-b50-s5": Preset("ImageNet-Subset (ImageFolder of 100 classes), 50 base + 5 steps, 20/class",
                                     _BSCE_SRC, _COSINE_IMAGENET, phases=6, **_IMAGENET_B50),
    "imagenet-subset-b50-s10": Preset("ImageNet-Subset, 50 base + 10 steps, 20/class", _BSCE_SRC, _COSINE_IMAGENET,
                                      phases=11, **_IMAGENET_B50),
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
    # Faithful-protocol versions (the faithful-protocols review): the same structure, but a step budget in place
    # of epochs, the same for every method (--phase-steps: SS-IL's epoch is one pass over the new data in batches
    # of 160, finetuning's one over new data + memory in batches of 64), and a longer base phase (--base-steps,
    # about 28 epochs of glyphs100-LT's phase 0 where 15 left it at ~81 % accuracy). Run them with
    # `tools/method_matrix.py --shared-base` so that every plain-CE method starts from one base model per seed.
    "glyphs100-lt-fair": Preset("glyphs100-LT as glyphs100-lt, 650 steps per phase for every method, 3,000 base steps",
                                "LT-CIL LFS-10 on glyphs100, equal budgets", _LUCIR_FAIR, data="npz",
                                data_root="../shared/data/glyphs100.npz", imbalance=100.0, order="seed1993", phases=10,
                                memory_per_class=20, backbone="resnet8", batch_size=64, augment="crop",
                                phase_steps=650, base_steps=3000),
    "glyphs100-lt-ordered-fair": Preset("glyphs100-LT ordered, 650 steps per phase, 3,000 base steps",
                                        "LT-CIL ordered LFS-10 on glyphs100, equal budgets", _LUCIR_FAIR, data="npz",
                                        data_root="../shared/data/glyphs100.npz", imbalance=100.0, order="ordered",
                                        phases=10, memory_per_class=20, backbone="resnet8", batch_size=64,
                                        augment="crop", phase_steps=650, base_steps=3000),
    "glyphs100-lt-lfh5-fair": Preset("glyphs100-LT ρ=100, 50 base classes + 5 steps of 10 (DGR's LFH), 650 steps "
                                     "per phase, 3,000 base steps", "LT-CIL LFH-5 on glyphs100, equal budgets", _LUCIR_FAIR,
                                     data="npz", data_root="../shared/data/glyphs100.npz", imbalance=100.0,
                                     order="seed1993", base_classes=50, phases=6, memory_per_class=20,
                                     backbone="resnet8", batch_size=64, augment="crop", phase_steps=650,
                                     base_steps=3000),
    "fmnist-lt-5x2-m1000-fair": Preset("Fashion-MNIST-LT as fmnist-lt-5x2-m1000, 400 steps per phase, 2,000 base steps",
                                       "JIOC protocol on Fashion-MNIST, equal budgets", _LUCIR_FAIR, data="fashion-mnist",
                                       imbalance=5000 / 206, order="seed1993", phases=5, memory_per_class=None,
                                       memory_total=1000, backbone="resnet8", batch_size=64, phase_steps=400,
                                       base_steps=2000),
    # BalancedS-CE's Table 1 / Table 3 shape on glyphs100 (balanced, half base + 5 steps), CPU-sized: a balanced
    # subset of 300 of the 841 training images per class (CIFAR-100 has 500), the papers' 160-250 epochs scaled to
    # 5 (the base phase 10; ResNet-8); every method gets the same epochs (LUCIR/PODNet keep their schedule shapes
    # and loss weights).
    "glyphs100-b50-s5": Preset("glyphs100 npz balanced (300/class), 50 base classes + 5 steps of 10, 20/class",
                               "BalancedS-CE B50 protocol on glyphs100", _COSINE_CPU, **_GLYPHS_B50),
    "glyphs100-b50-s5-m0": Preset("glyphs100 npz balanced (300/class), 50 base classes + 5 steps, no memory",
                                  "BalancedS-CE Table 3 protocol on glyphs100", _COSINE_CPU,
                                  **{**_GLYPHS_B50, "memory_per_class": 0}),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_values(name: str, method: str | None = None) -> dict[str, Any]:
    """The option values of preset ``name``, with ``method``'s own values where the protocol pins them."""
    from .errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is not known: choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    return {**preset, **preset.per_method.get(method, {})}
