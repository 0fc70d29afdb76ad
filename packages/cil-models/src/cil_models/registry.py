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
``torchvision:<name>``    a torchvision classification model, classifier removed  its width
``timm:<name>``           a timm model (extra ``cil-models[timm]``), no classifier ``num_features``
========================  ====================================================  ============

``weights=PATH`` loads a local weight file (:func:`~cil_models.ecosystem.load_backbone_weights`); nothing is
downloaded. :func:`check_backbone_name` validates a name without building the network.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial

from torch import nn

from .cifar_resnet import cifar_resnet
from .ecosystem import PREFIXES, build_ecosystem_backbone, load_backbone_weights
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
"""Built-in names accepted by :func:`build_backbone` (``torchvision:<name>`` and ``timm:<name>`` too)."""

__all__ = ["BACKBONES", "build_backbone", "check_backbone_name", "load_backbone_weights"]


def check_backbone_name(name: object) -> None:
    """Raise :class:`~cil_models.errors.ModelConfigError` (naming the choices) unless ``name`` is a built-in
    backbone, ``torchvision:<a torchvision classification model>`` or ``timm:<a timm model>`` with timm
    installed. Builds nothing."""
    if not isinstance(name, str):
        raise ModelConfigError(f"a backbone name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key in _BUILDERS:
        return
    source, _, model = name.partition(":")
    if source == "torchvision" and model:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model in known:
            return
        raise ModelConfigError(f"unknown torchvision model {model!r}; torchvision's classification models: "
                               f"{', '.join(sorted(known))}")
    if source == "timm" and model:
        try:
            timm = importlib.import_module("timm")  # the optional extra cil-models[timm]
        except ImportError:
            raise ModelConfigError(f"backbone {name!r} needs timm: pip install 'cil-models[timm]'") from None
        if timm.is_model(model):
            return
        raise ModelConfigError(f"unknown timm model {model!r} (timm.list_models() lists them)")
    raise ModelConfigError(f"unknown backbone name {name!r}; choose one of: {', '.join(BACKBONES)}, "
                           "torchvision:<model name>, timm:<model name>")


def build_backbone(name: str, in_channels: int = 3, *, weights: str | None = None, **kw: object) -> nn.Module:
    """Build the backbone called ``name`` for images with ``in_channels`` channels.

    Keyword options go to the builder: ``shortcut="A"|"B"``, ``zero_init_residual``,
    ``last_relu`` (``False``: LUCIR) and ``block_relu`` (``False``: PODNet) for the CIFAR
    ResNets; ``zero_init_residual`` and ``last_relu`` for the ResNet-18s; none for
    ``torchvision:<name>`` / ``timm:<name>`` (:mod:`cil_models.ecosystem`). ``weights``: the path of a
    local weight file, loaded after the backbone is built. Unknown names raise
    :class:`~cil_models.errors.ModelConfigError` listing the known ones. No weights are downloaded.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of {', '.join(BACKBONES)}), got {type(name).__name__}")
    if name.startswith(PREFIXES):
        if kw:
            raise ModelConfigError(f"backbone {name!r} takes no options, got {', '.join(sorted(kw))}")
        return build_ecosystem_backbone(name, in_channels, weights)
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ModelConfigError(f"unknown backbone name {name!r}; choose one of: {', '.join(BACKBONES)}, "
                               "torchvision:<model name>, timm:<model name>")
    backbone = _BUILDERS[key](in_channels=in_channels, **kw)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone
