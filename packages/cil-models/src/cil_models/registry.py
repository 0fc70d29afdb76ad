"""Backbones by name: :func:`build_backbone` and the list :data:`BACKBONES`.

Every backbone maps images ``[B, C, H, W]`` to pooled features ``[B, feature_dim]`` through
``forward(x)`` (also available as ``features(x)``) and has the attribute ``feature_dim``;
``feature_maps(x)`` gives the stage outputs and ``stage_features(x)`` both from one pass.

========================  ====================================================  ============
name                      architecture                                           feature_dim
========================  ====================================================  ============
``resnet8``/``20``/``32``  CIFAR ResNet of depth 6n+2 (:mod:`.cifar_resnet`)      64
``resnet44``/``56``/``110``
``resnet18-cifar``        ResNet-18, 3×3 stride-1 stem, no max pool               512
``resnet18``              torchvision ResNet-18 for ImageNet-size inputs          512
========================  ====================================================  ============
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from .cifar_resnet import cifar_resnet
from .errors import ModelConfigError
from .resnet18 import resnet18, resnet18_cifar

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet8": partial(cifar_resnet, 8),
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet44": partial(cifar_resnet, 44),
    "resnet56": partial(cifar_resnet, 56),
    "resnet110": partial(cifar_resnet, 110),
    "resnet18-cifar": resnet18_cifar,
    "resnet18": resnet18,
}

BACKBONES: list[str] = list(_BUILDERS)
"""Names accepted by :func:`build_backbone`."""


def build_backbone(name: str, in_channels: int = 3, **kw: object) -> nn.Module:
    """Build the backbone called ``name`` for images with ``in_channels`` channels.

    Keyword options go to the builder: ``shortcut="A"|"B"``, ``zero_init_residual``,
    ``last_relu`` (``False``: LUCIR) and ``block_relu`` (``False``: PODNet) for the CIFAR
    ResNets; ``zero_init_residual`` and ``last_relu`` for the ResNet-18s. Unknown names raise
    :class:`~cil_models.errors.ModelConfigError` listing the known ones. No weights are downloaded.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of {', '.join(BACKBONES)}), got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ModelConfigError(f"unknown backbone name {name!r}; choose one of: {', '.join(BACKBONES)}")
    return _BUILDERS[key](in_channels=in_channels, **kw)
