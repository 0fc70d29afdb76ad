"""Backbones from torchvision and timm (``torchvision:<name>``, ``timm:<name>``) and local weight files.

Nothing is ever downloaded: models are built with ``weights=None`` / ``pretrained=False``, and weights come
only from a file given by the caller (:func:`load_backbone_weights`).

* ``torchvision:<name>``: any classification model of ``torchvision.models.get_model`` whose classifier is
  an attribute ``fc``, ``classifier``, ``head`` or ``heads`` (ResNets, ResNeXts, Wide ResNets, RegNets,
  MobileNets, EfficientNets, ConvNeXts, DenseNets, VGGs, ViTs, Swins, ...). The classifier is replaced by the
  identity; ``feature_dim`` is the input width of its first linear layer.
* ``timm:<name>`` (the optional extra ``cil-models[timm]``): ``timm.create_model(name, pretrained=False,
  num_classes=0)``; ``feature_dim`` is timm's ``num_features``.

With ``in_channels != 3`` the first convolution is rebuilt for that many channels (its weights summed over
the colour channels when a 3-channel weight file is loaded, as timm's ``adapt_input_conv`` does for one
channel). These backbones return pooled features from ``forward``/``features``; they have no
``stage_features`` (PODNet needs the CIFAR ResNets or the ResNet-18s).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ModelConfigError

__all__ = ["EcosystemBackbone", "build_ecosystem_backbone", "load_backbone_weights"]

PREFIXES = ("torchvision:", "timm:")
_CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "head", "heads")


class EcosystemBackbone(nn.Module):
    """A torchvision or timm model whose classifier was removed: ``forward(x)`` → ``[B, feature_dim]``."""

    def __init__(self, model: nn.Module, feature_dim: int, source: str) -> None:
        super().__init__()
        self.model = model
        self.feature_dim = int(feature_dim)
        self.source = source

    def features(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):  # e.g. GoogLeNet/Inception auxiliary outputs in training mode
            out = out[0]
        return out.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, feature_dim={self.feature_dim}"


def _first_linear(module: nn.Module) -> nn.Linear | None:
    if isinstance(module, nn.Linear):
        return module
    return next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


def _torchvision_model(name: str) -> tuple[nn.Module, int]:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except (ValueError, KeyError) as error:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise ModelConfigError(f"unknown torchvision model {name!r} ({error}); torchvision's classification "
                               f"models: {known}") from None
    for attribute in _CLASSIFIER_ATTRIBUTES:
        head = getattr(model, attribute, None)
        linear = _first_linear(head) if isinstance(head, nn.Module) else None
        if linear is not None:
            setattr(model, attribute, nn.Identity())
            if hasattr(model, "aux_logits"):  # GoogLeNet / Inception: no auxiliary classifiers
                model.aux_logits = False
                for aux in ("aux1", "aux2", "AuxLogits"):
                    if hasattr(model, aux):
                        setattr(model, aux, None)
            return model, linear.in_features
    raise ModelConfigError(f"torchvision model {name!r} has no linear classifier in an attribute "
                           f"{', '.join(_CLASSIFIER_ATTRIBUTES)}: it cannot be used as a feature extractor here")


def _timm_model(name: str) -> tuple[nn.Module, int]:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise ModelConfigError(f"backbone 'timm:{name}' needs timm: pip install 'cil-models[timm]'") from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise ModelConfigError(f"unknown timm model {name!r}: {error}") from None
    return model, int(model.num_features)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Rebuild the first 3-channel convolution for ``in_channels`` channels (freshly initialised)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return
                if child.groups != 1:
                    raise ModelConfigError(f"the first convolution has groups={child.groups}: cannot adapt it to "
                                           f"{in_channels} input channels")
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, 1, child.bias is not None, child.padding_mode)
                setattr(parent, child_name, conv)
                return
    raise ModelConfigError("no convolution found to adapt to the input channels")


def build_ecosystem_backbone(name: str, in_channels: int = 3, weights: str | Path | None = None) -> EcosystemBackbone:
    """``torchvision:<name>`` or ``timm:<name>`` as a feature extractor (see the module); ``weights``: a local
    file loaded with :func:`load_backbone_weights`."""
    source, _, model_name = name.partition(":")
    if not model_name:
        raise ModelConfigError(f"backbone {name!r}: give a model name after {source}:, e.g. {source}:resnet18")
    model, feature_dim = _torchvision_model(model_name) if source == "torchvision" else _timm_model(model_name)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    backbone = EcosystemBackbone(model, feature_dim, name)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelConfigError(f"backbone weights {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        try:  # installed with timm (the optional extra cil-models[timm])
            load_file = importlib.import_module("safetensors.torch").load_file
        except ImportError:
            raise ModelConfigError(f"{path} is a safetensors file: pip install safetensors to read it") from None
        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets one message
            raise ModelConfigError(f"backbone weights {str(path)!r} cannot be read as a PyTorch state dict "
                                   f"(tensors only): {error}") from None
    for key in ("state_dict", "model", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelConfigError(f"backbone weights {str(path)!r}: expected a dict of tensors (a state dict)")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local weight file into ``backbone`` (an :class:`EcosystemBackbone` or any backbone of
    :func:`~cil_models.build_backbone`); nothing is downloaded.

    The file is a state dict saved with ``torch.save`` (also nested under ``"state_dict"``/``"model"``/
    ``"net"``, keys possibly prefixed by ``module.``), or a ``.safetensors`` file. Keys of the classifier the
    backbone does not have (``fc.``, ``classifier.``, ``head.``, ``heads.``, ``AuxLogits.``, ``aux1.``,
    ``aux2.``) are ignored; keys may name the bare model (torchvision/timm names) or the backbone. A 3-channel
    first convolution loads into a 1-channel one by summing over the colour channels. Any other missing or
    unexpected key, or shape mismatch, raises :class:`~cil_models.ModelConfigError` naming it.
    """
    path = Path(path)
    state = {k.removeprefix("module."): v for k, v in _read_state_dict(path).items()}
    own = backbone.state_dict()
    prefix = "model." if isinstance(backbone, EcosystemBackbone) else ""
    if prefix and not any(k.startswith(prefix) for k in state):
        state = {prefix + k: v for k, v in state.items()}
    classifier = tuple(prefix + a + "." for a in (*_CLASSIFIER_ATTRIBUTES, "AuxLogits", "aux1", "aux2"))
    state = {k: v for k, v in state.items() if k in own or not k.startswith(classifier)}
    for key, value in list(state.items()):
        mine = own.get(key)
        if (mine is not None and value.dim() == 4 and mine.dim() == 4 and value.shape[1] == 3 and mine.shape[1] == 1
                and value.shape[0] == mine.shape[0] and value.shape[2:] == mine.shape[2:]):
            state[key] = value.sum(dim=1, keepdim=True)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                details.append(f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''} ({len(keys)})")
        raise ModelConfigError(f"backbone weights {str(path)!r} do not fit the backbone: {'; '.join(details)}")
    backbone.load_state_dict(state, strict=True)
