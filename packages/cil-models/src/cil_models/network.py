"""The incremental network: a backbone and an expandable head, with teacher copies and checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import one_of, positive_int
from .bias_correction import APPLY_TO, BiasCorrection
from .errors import CheckpointError, ModelConfigError
from .heads import CosineLinear, IncrementalHead, IncrementalLinear
from .registry import build_backbone

HEADS = ("linear", "cosine")
CHECKPOINT_FORMAT = "cil_models.IncrementalNet"
CHECKPOINT_VERSION = 1
_PLAIN_TYPES = (str, int, float, bool, type(None))


class IncrementalNet(nn.Module):
    """Backbone + expandable head for class-incremental learning.

    ``forward(x)`` returns the logits over all classes seen so far; ``features(x)`` the pooled
    backbone features. :meth:`expand` adds a task's classes without touching the existing
    weights, :meth:`frozen_copy` gives the teacher of the next phase, and
    :meth:`checkpoint_state` / :meth:`from_checkpoint_state` round-trip a network exactly.

    Args:
        backbone: a name of :data:`~cil_models.BACKBONES` or a module with ``feature_dim`` whose
            ``forward(x)`` returns ``[B, feature_dim]`` features.
        head: ``"linear"`` (:class:`~cil_models.IncrementalLinear`) or ``"cosine"``
            (:class:`~cil_models.CosineLinear`, LUCIR).
        in_channels: input channels (used when ``backbone`` is a name).
        head_options: keyword options of the head class (e.g. ``{"bias": False}``,
            ``{"init": "torch"}``, ``{"scale_init": 1.0}``); plain values only.
        backbone_options: keyword options of :func:`~cil_models.build_backbone`
            (e.g. ``{"shortcut": "B"}``); plain values only.
        bias_correction: ``None`` (default), ``"newest"`` or ``"all"``: add a BiC
            :class:`~cil_models.BiasCorrection` applied to the head's logits.
    """

    def __init__(
        self,
        backbone: nn.Module | str,
        head: str = "linear",
        in_channels: int = 3,
        *,
        head_options: Mapping[str, Any] | None = None,
        backbone_options: Mapping[str, Any] | None = None,
        bias_correction: str | None = None,
    ) -> None:
        super().__init__()
        one_of("head", head, HEADS)
        positive_int("in_channels", in_channels)
        head_options = _plain_options("head_options", head_options)
        backbone_options = _plain_options("backbone_options", backbone_options)
        if bias_correction is not None:
            one_of("bias_correction", bias_correction, APPLY_TO)
        if isinstance(backbone, str):
            backbone_name: str | None = backbone
            self.backbone = build_backbone(backbone, in_channels, **backbone_options)
        elif isinstance(backbone, nn.Module):
            if backbone_options:
                raise ModelConfigError("backbone_options can only be used with a backbone name, not a module")
            backbone_name = None
            self.backbone = backbone
        else:
            raise TypeError(f"backbone must be a backbone name (str) or an nn.Module, got {type(backbone).__name__}")
        feature_dim = getattr(self.backbone, "feature_dim", None)
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ModelConfigError(
                f"the backbone must have an int attribute feature_dim >= 1, got {feature_dim!r}"
            )
        self.feature_dim = feature_dim
        head_cls = IncrementalLinear if head == "linear" else CosineLinear
        self.head: IncrementalHead = head_cls(feature_dim, **head_options)
        self.bias_correction = None if bias_correction is None else BiasCorrection(bias_correction)
        self.config: dict[str, Any] = {
            "backbone": backbone_name,
            "head": head,
            "in_channels": in_channels,
            "head_options": head_options,
            "backbone_options": backbone_options,
            "bias_correction": bias_correction,
        }

    # ---- classes -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def num_tasks(self) -> int:
        return self.head.num_tasks

    @property
    def task_sizes(self) -> list[int]:
        return self.head.task_sizes

    @property
    def boundaries(self) -> list[int]:
        return self.head.boundaries

    @property
    def task_slices(self) -> list[slice]:
        return self.head.task_slices

    def expand(self, n_new: int) -> None:
        """Add ``n_new`` classes (a new task) to the head; existing weights are untouched."""
        self.head.expand(n_new)
        if self.bias_correction is not None:
            self.bias_correction.add_task()

    def expand_to(self, task_sizes: Sequence[int]) -> None:
        """Expand until ``task_sizes`` matches; the current task sizes must be a prefix of it."""
        self.head.expand_to(list(task_sizes))
        if self.bias_correction is not None:
            self.bias_correction.add_tasks_to(self.head.num_tasks)

    def parameters_without_bias_correction(self) -> list[nn.Parameter]:
        """Backbone and head parameters, without the BiC ``α``/``β`` (BiC's first-stage optimiser)."""
        return [*self.backbone.parameters(), *self.head.parameters()]

    # ---- forward -----------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features ``[B, feature_dim]``."""
        return self.backbone(x)

    def logits(self, features: Tensor) -> Tensor:
        """Head logits (bias-corrected when the network has a BiC layer) of given features."""
        z = self.head(features)
        if self.bias_correction is not None:
            z = self.bias_correction(z, self.head.boundaries)
        return z

    def forward(self, x: Tensor, *, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, num_classes]``; with ``return_features=True`` the pair ``(logits, features)``."""
        f = self.backbone(x)
        z = self.logits(f)
        return (z, f) if return_features else z

    # ---- copies and formats -----------------------------------------------------------------
    def frozen_copy(self) -> IncrementalNet:
        """A deep copy in eval mode with ``requires_grad=False`` everywhere (a teacher)."""
        teacher = copy.deepcopy(self)
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher

    def to_channels_last(self) -> IncrementalNet:
        """Store 4-D parameters and buffers in ``torch.channels_last`` format (in place); returns ``self``."""
        return self.to(memory_format=torch.channels_last)

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self, *, clone: bool = True) -> dict[str, Any]:
        """``{"format", "version", "task_sizes", "config", "state_dict"}`` of this network.

        The values are plain Python types and tensors (loadable with
        ``torch.load(..., weights_only=True)``). ``clone=True`` (default) copies the tensors, so
        the state stays as it is while training goes on.
        """
        state_dict = self.state_dict()
        if clone:
            state_dict = type(state_dict)((k, v.detach().clone()) for k, v in state_dict.items())
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "task_sizes": self.task_sizes,
            "config": copy.deepcopy(self.config),
            "state_dict": state_dict,
        }

    @classmethod
    def from_checkpoint_state(
        cls, state: Mapping[str, Any], *, backbone: nn.Module | None = None
    ) -> IncrementalNet:
        """Rebuild a network from :meth:`checkpoint_state`: same config, same tasks, same weights.

        Args:
            state: the dictionary returned by :meth:`checkpoint_state` (possibly through
                ``torch.save``/``torch.load``).
            backbone: a fresh backbone module, required when the network was built from a module
                instead of a backbone name (its architecture must match the saved weights).

        The global CPU random generator is left as it was (the throw-away initialisation runs
        on a forked generator).
        """
        config = _checked_checkpoint(state)
        if config["backbone"] is None and backbone is None:
            raise CheckpointError(
                "this checkpoint was made from a network with a custom backbone module; pass a fresh "
                "instance of it as backbone="
            )
        # The initial weights are overwritten below: build them without advancing the global
        # CPU generator, so that a resumed run draws the same random numbers as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            net = cls(
                backbone if backbone is not None else config["backbone"],
                config["head"],
                config["in_channels"],
                head_options=config["head_options"],
                backbone_options=config["backbone_options"] if backbone is None else None,
                bias_correction=config["bias_correction"],
            )
            net.expand_to(state["task_sizes"])
        reference = next(iter(state["state_dict"].values()), None)
        if reference is not None:
            net.to(device=reference.device)
        try:
            net.load_state_dict(state["state_dict"], strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"the checkpoint's state_dict does not fit the rebuilt network: {error}") from error
        return net


def _plain_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{name} must be a mapping of option names to values, got {type(options).__name__}")
    result = {}
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, _PLAIN_TYPES):
            raise ModelConfigError(
                f"{name} must map str names to plain values (str, int, float, bool, None) so that "
                f"checkpoints can record them; got {key!r}: {value!r}"
            )
        result[key] = value
    return result


def _checked_checkpoint(state: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"state must be a dict from IncrementalNet.checkpoint_state(), got {type(state).__name__}"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"state['format'] must be {CHECKPOINT_FORMAT!r} (a dict from IncrementalNet.checkpoint_state()), "
            f"got {state.get('format')!r}"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"state['version'] must be {CHECKPOINT_VERSION} (the format this cil-models reads), "
            f"got {state.get('version')!r}"
        )
    missing = {"task_sizes", "config", "state_dict"} - set(state)
    if missing:
        raise CheckpointError(f"state is missing the keys {sorted(missing)}")
    config = state["config"]
    keys = {"backbone", "head", "in_channels", "head_options", "backbone_options", "bias_correction"}
    if not isinstance(config, Mapping) or set(config) != keys:
        raise CheckpointError(
            f"state['config'] must have exactly the keys {sorted(keys)}, got "
            f"{sorted(config) if isinstance(config, Mapping) else type(config).__name__}"
        )
    return dict(config)
