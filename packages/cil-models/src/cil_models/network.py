"""The incremental network: feature extractors and an expandable head, with teacher copies and checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import one_of, positive_int
from .bias_correction import APPLY_TO, BiasCorrection
from .errors import CheckpointError, HeadStateError, ModelConfigError
from .heads import NEW_COLUMNS, CosineLinear, IncrementalHead, IncrementalLinear
from .local_similarity import LocalSimilarityHead
from .registry import build_backbone

HEADS = ("linear", "cosine", "local-similarity")
_HEAD_CLASSES = {"linear": IncrementalLinear, "cosine": CosineLinear, "local-similarity": LocalSimilarityHead}
EXTRACTOR_INITS = ("copy", "fresh")
CHECKPOINT_FORMAT = "cil_models.IncrementalNet"
CHECKPOINT_VERSION = 2
"""Version 2 adds ``extractors`` (count and frozen flags) and ``aux_head``; version 1 still loads."""
_READABLE_VERSIONS = (1, 2)
_PLAIN_TYPES = (str, int, float, bool, type(None))


class IncrementalNet(nn.Module):
    """Feature extractors + expandable head for class-incremental learning.

    ``forward(x)`` returns the logits over all classes seen so far; ``features(x)`` the pooled
    features. :meth:`expand` adds a task's classes without touching the existing weights,
    :meth:`frozen_copy` gives the teacher of the next phase, and :meth:`checkpoint_state` /
    :meth:`from_checkpoint_state` round-trip a network exactly.

    **Several feature extractors** (DER, Yan et al., CVPR 2021; FOSTER, Wang et al., ECCV 2022).
    A network starts with one extractor (``extractors[0]``, also ``backbone`` while it is the
    only one) and :meth:`add_extractor` appends one of the same kind, by default a copy of the
    newest (as both official codes do). The features are the concatenation
    ``[f_1(x); …; f_t(x)]`` (``feature_dim`` is the sum) and the head grows in input width
    (old rows keep their old columns). :meth:`freeze_extractors` freezes extractors:
    ``requires_grad=False``, batch norms kept in eval mode even in ``train()`` (DER's pitfall:
    ``requires_grad=False`` alone lets the running statistics drift), and run under
    ``torch.no_grad`` in :meth:`features`. :meth:`keep_only_extractor` returns to one extractor
    (FOSTER's compressed model). The extractors live in this class rather than in a subclass so
    that a training loop builds every method's network the same way and a recipe only calls
    these methods; a network with one extractor behaves (and draws random numbers) exactly as
    before they existed.

    Args:
        backbone: a name of :data:`~cil_models.BACKBONES` or a module with ``feature_dim`` whose
            ``forward(x)`` returns ``[B, feature_dim]`` features.
        head: ``"linear"`` (:class:`~cil_models.IncrementalLinear`), ``"cosine"``
            (:class:`~cil_models.CosineLinear`, LUCIR) or ``"local-similarity"``
            (:class:`~cil_models.LocalSimilarityHead`, PODNet).
        in_channels: input channels (used when ``backbone`` is a name).
        head_options: keyword options of the head class (e.g. ``{"bias": False}``,
            ``{"init": "torch"}``, ``{"scale_init": 1.0}``, ``{"proxies_per_class": 10}``);
            plain values only.
        backbone_options: keyword options of :func:`~cil_models.build_backbone`
            (e.g. ``{"shortcut": "B"}``, ``{"last_relu": False}``); plain values only.
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
            module = build_backbone(backbone, in_channels, **backbone_options)
        elif isinstance(backbone, nn.Module):
            if backbone_options:
                raise ModelConfigError("backbone_options can only be used with a backbone name, not a module")
            backbone_name = None
            module = backbone
        else:
            raise TypeError(f"backbone must be a backbone name (str) or an nn.Module, got {type(backbone).__name__}")
        feature_dim = _feature_dim(module)
        self.extractors = nn.ModuleList([module])
        self._frozen: list[bool] = [False]
        self.head: IncrementalHead = _HEAD_CLASSES[head](feature_dim, **head_options)
        self.bias_correction = None if bias_correction is None else BiasCorrection(bias_correction)
        self.aux_head: nn.Linear | None = None
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

    def expand(self, n_new: int, *, weight: Tensor | None = None, bias: Tensor | None = None) -> None:
        """Add ``n_new`` classes (a new task) to the head; existing weights are untouched.

        ``weight``/``bias``: optional initial rows of the new classes (see
        :meth:`IncrementalHead.expand <cil_models.IncrementalHead.expand>`).
        """
        self.head.expand(n_new, weight, bias)
        if self.bias_correction is not None:
            self.bias_correction.add_task()

    def expand_imprinted(self, rows: Tensor) -> None:
        """Add a task whose rows are imprinted by the head (weight imprinting).

        ``rows``: for a cosine head the new classes' normalised feature means ``[n_new, D]``
        (LUCIR, :meth:`CosineLinear.imprinted_rows <cil_models.CosineLinear.imprinted_rows>`); for
        a local-similarity head the k-means centres ``[n_new, K, D]`` (PODNet,
        :func:`~cil_models.kmeans_proxies`). A linear head has no imprinting rule: use
        ``expand(n, weight=...)``.
        """
        if not isinstance(self.head, (CosineLinear, LocalSimilarityHead)):
            raise ModelConfigError(
                f"expand_imprinted needs a 'cosine' or 'local-similarity' head, this network has {self.config['head']!r}; "
                "use expand(n_new, weight=...) to set explicit rows"
            )
        self.head.expand_imprinted(rows)
        if self.bias_correction is not None:
            self.bias_correction.add_task()

    def expand_to(self, task_sizes: Sequence[int]) -> None:
        """Expand until ``task_sizes`` matches; the current task sizes must be a prefix of it."""
        self.head.expand_to(list(task_sizes))
        if self.bias_correction is not None:
            self.bias_correction.add_tasks_to(self.head.num_tasks)

    def parameters_without_bias_correction(self) -> list[nn.Parameter]:
        """Extractor, head (and auxiliary head) parameters, without the BiC ``α``/``β`` (BiC's first stage)."""
        aux = [] if self.aux_head is None else list(self.aux_head.parameters())
        return [*self.extractors.parameters(), *self.head.parameters(), *aux]

    # ---- feature extractors ------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The newest feature extractor (the only one unless :meth:`add_extractor` was called)."""
        return self.extractors[-1]

    @property
    def num_extractors(self) -> int:
        return len(self.extractors)

    @property
    def extractor_dims(self) -> list[int]:
        """``feature_dim`` of each extractor."""
        return [_feature_dim(e) for e in self.extractors]

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features`: the sum of the extractors' ``feature_dim``."""
        return sum(self.extractor_dims)

    @property
    def extractor_slices(self) -> list[slice]:
        """The columns of each extractor in :meth:`features` (``features[:, s]``)."""
        edges = [0]
        for dim in self.extractor_dims:
            edges.append(edges[-1] + dim)
        return [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]

    @property
    def frozen_extractors(self) -> list[int]:
        """Indices of the frozen extractors."""
        return [i for i, frozen in enumerate(self._frozen) if frozen]

    def add_extractor(self, *, init: str = "copy", new_columns: str = "random") -> int:
        """Append a feature extractor of the same kind; returns its index.

        Args:
            init: ``"copy"`` (default): a copy of the newest extractor's weights and buffers, as
                DER (official ``_add_classes_multi_fc``, PyCIL ``DERNet.update_fc``) and FOSTER
                (``FOSTERNet.update_fc``) initialise the new backbone; ``"fresh"``: a newly
                initialised backbone of the same name and options (networks built from a name).
            new_columns: the existing head rows' weights on the new features: ``"random"``
                (PyCIL's DER/FOSTER, the head's initialisation at the new width; default) or
                ``"zero"`` (old logits unchanged until training). See
                :meth:`IncrementalHead.add_input_features <cil_models.IncrementalHead.add_input_features>`.

        The new extractor is trainable, on the device/dtype/memory format of the newest one and
        in the network's mode. The head's weights become new parameters, so rebuild the
        optimiser after this call; freeze the old extractors with :meth:`freeze_extractors`.
        """
        one_of("init", init, EXTRACTOR_INITS)
        one_of("new_columns", new_columns, NEW_COLUMNS)
        newest = self.extractors[-1]
        if init == "copy":
            extractor = copy.deepcopy(newest)
        else:
            if self.config["backbone"] is None:
                raise ModelConfigError(
                    "init='fresh' needs a network built from a backbone name; with a custom backbone module use init='copy'"
                )
            extractor = build_backbone(self.config["backbone"], self.config["in_channels"], **self.config["backbone_options"])
            extractor = _placed_like(extractor, newest)
        extractor.requires_grad_(True)
        extractor.train(self.training)
        self.head.add_input_features(_feature_dim(extractor), new_columns)
        self.extractors.append(extractor)
        self._frozen.append(False)
        return len(self.extractors) - 1

    def freeze_extractors(self, indices: Iterable[int] | None = None) -> None:
        """Freeze extractors (default: all but the newest): ``requires_grad=False``, batch norms in
        eval mode from now on (also after ``train()``), run under ``torch.no_grad`` (DER, FOSTER)."""
        for i in self._indices(indices, default=range(len(self.extractors) - 1)):
            self.extractors[i].requires_grad_(False)
            self.extractors[i].eval()
            self._frozen[i] = True

    def unfreeze_extractors(self, indices: Iterable[int] | None = None) -> None:
        """Make extractors trainable again (default: all); they follow the network's mode."""
        for i in self._indices(indices, default=range(len(self.extractors))):
            self.extractors[i].requires_grad_(True)
            self.extractors[i].train(self.training)
            self._frozen[i] = False

    def keep_only_extractor(self, index: int) -> None:
        """Drop every extractor but ``index``, and the head columns of the dropped ones.

        After FOSTER's compression (Wang et al., ECCV 2022) the deployed network has one
        backbone again. The kept extractor keeps its frozen flag, and the head rows keep their
        columns of that extractor; the head's weights become new parameters. (FOSTER's own
        student takes its head from the *previous* phase's head plus new rows, which a recipe
        gets as ``previous_net`` copied and expanded instead.)
        """
        (index,) = self._indices([index], default=())
        columns = self.extractor_slices[index]
        self.head.keep_input_features(columns.start, columns.stop)
        self.extractors = nn.ModuleList([self.extractors[index]])
        self._frozen = [self._frozen[index]]
        if self.aux_head is not None and self.aux_head.in_features != self.extractor_dims[-1]:
            self.aux_head = None

    def _indices(self, indices: Iterable[int] | None, default: Iterable[int]) -> list[int]:
        n = len(self.extractors)
        chosen = list(default if indices is None else indices)
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"extractor indices must be ints, got {i!r}")
            if not -n <= i < n:
                raise HeadStateError(f"extractor index must be in [{-n}, {n - 1}] for {n} extractors, got {i}")
        return sorted({i % n for i in chosen})

    def train(self, mode: bool = True) -> IncrementalNet:
        """Set the mode; frozen extractors stay in eval mode (their batch-norm statistics never move)."""
        super().train(mode)
        for extractor, frozen in zip(self.extractors, self._frozen):
            if frozen:
                extractor.eval()
        return self

    # ---- auxiliary head ------------------------------------------------------------------------
    def set_aux_head(self, out_features: int) -> nn.Linear:
        """Create (or replace) an auxiliary linear head on the newest extractor's features.

        DER's auxiliary classifier has ``C_new + 1`` outputs (class 0 = any old class; Yan et al.,
        CVPR 2021); FOSTER's feature-enhancement head has ``C`` outputs (Wang et al., ECCV 2022).
        Initialised as :class:`~cil_models.IncrementalLinear` (PyCIL's ``SimpleLinear``:
        ``U(±sqrt(3/d))``, zero bias), placed like the head, part of the network's parameters
        and checkpoints until :meth:`remove_aux_head`. :meth:`forward` does not use it.
        """
        positive_int("out_features", out_features)
        head = IncrementalLinear(self.extractor_dims[-1])
        head.expand(out_features)
        reference = self.head.blocks[-1].weight if len(self.head.blocks) else self.head._placement
        self.aux_head = head.blocks[0].to(device=reference.device, dtype=reference.dtype)
        return self.aux_head

    def remove_aux_head(self) -> None:
        """Drop the auxiliary head (DER discards it after each phase)."""
        self.aux_head = None

    def aux_logits(self, features: Tensor) -> Tensor:
        """Auxiliary logits of the newest extractor's columns of ``features`` (from :meth:`features`)."""
        if self.aux_head is None:
            raise HeadStateError("this network has no auxiliary head; call set_aux_head(out_features) first")
        return self.aux_head(features[:, self.extractor_slices[-1]])

    # ---- forward -----------------------------------------------------------------------------
    def _extract(self, index: int, x: Tensor) -> Tensor:
        if self._frozen[index]:
            with torch.no_grad():
                return self.extractors[index](x)
        return self.extractors[index](x)

    def features(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, feature_dim]`` (concatenated over the extractors, oldest first)."""
        if len(self.extractors) == 1:
            return self._extract(0, x)
        return torch.cat(self.features_per_extractor(x), dim=1)

    def features_per_extractor(self, x: Tensor) -> list[Tensor]:
        """Each extractor's pooled features ``[B, extractor_dims[i]]``, oldest first."""
        return [self._extract(i, x) for i in range(len(self.extractors))]

    def stage_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """``(maps, features)`` of one pass: the stage output maps and the pooled features.

        PODNet's inputs (Douillard et al., ECCV 2020): ``maps`` for POD-spatial, ``features``
        for POD-flat and the classifier (``logits(features)``). Needs one extractor with a
        ``stage_features`` method (the CIFAR ResNets and ResNet-18s have it).
        """
        if len(self.extractors) != 1:
            raise HeadStateError(f"stage_features needs a network with one extractor, this one has {len(self.extractors)}")
        extractor = self.extractors[0]
        if not hasattr(extractor, "stage_features"):
            raise ModelConfigError(f"the backbone {type(extractor).__name__} has no stage_features(x) method")
        if self._frozen[0]:
            with torch.no_grad():
                return extractor.stage_features(x)
        return extractor.stage_features(x)

    def logits(self, features: Tensor) -> Tensor:
        """Head logits (bias-corrected when the network has a BiC layer) of given features."""
        z = self.head(features)
        if self.bias_correction is not None:
            z = self.bias_correction(z, self.head.boundaries)
        return z

    def forward(self, x: Tensor, *, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, num_classes]``; with ``return_features=True`` the pair ``(logits, features)``."""
        f = self.features(x)
        z = self.logits(f)
        return (z, f) if return_features else z

    # ---- sizes -------------------------------------------------------------------------------
    def parameter_count(self) -> dict[str, Any]:
        """Parameter counts: ``{"extractors": [{"total", "trainable", "frozen"}, ...], "head": {...},
        "bias_correction": {...}, "aux_head": {...}, "total": int, "trainable": int}``."""
        def count(module: nn.Module | None) -> dict[str, int]:
            params = [] if module is None else list(module.parameters())
            return {
                "total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
            }

        extractors = [{**count(e), "frozen": f} for e, f in zip(self.extractors, self._frozen)]
        result: dict[str, Any] = {
            "extractors": extractors,
            "head": count(self.head),
            "bias_correction": count(self.bias_correction),
            "aux_head": count(self.aux_head),
        }
        parts = [*extractors, result["head"], result["bias_correction"], result["aux_head"]]
        result["total"] = sum(p["total"] for p in parts)
        result["trainable"] = sum(p["trainable"] for p in parts)
        return result

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
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Version-1 state dicts name the single extractor "backbone."; it is "extractors.0." now.
        old = prefix + "backbone."
        if not any(k.startswith(prefix + "extractors.") for k in state_dict):
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[prefix + "extractors.0." + key[len(old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def checkpoint_state(self, *, clone: bool = True) -> dict[str, Any]:
        """``{"format", "version", "task_sizes", "config", "extractors", "aux_head", "state_dict"}``.

        ``extractors`` is ``{"count": n, "frozen": [bool, ...]}``, ``aux_head`` the auxiliary
        head's output count or ``None``. The values are plain Python types and tensors
        (loadable with ``torch.load(..., weights_only=True)``). ``clone=True`` (default) copies
        the tensors, so the state stays as it is while training goes on.
        """
        state_dict = self.state_dict()
        if clone:
            state_dict = type(state_dict)((k, v.detach().clone()) for k, v in state_dict.items())
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "task_sizes": self.task_sizes,
            "config": copy.deepcopy(self.config),
            "extractors": {"count": len(self.extractors), "frozen": list(self._frozen)},
            "aux_head": None if self.aux_head is None else self.aux_head.out_features,
            "state_dict": state_dict,
        }

    @classmethod
    def from_checkpoint_state(
        cls, state: Mapping[str, Any], *, backbone: nn.Module | None = None
    ) -> IncrementalNet:
        """Rebuild a network from :meth:`checkpoint_state`: same config, extractors, tasks, weights.

        Args:
            state: the dictionary returned by :meth:`checkpoint_state` (possibly through
                ``torch.save``/``torch.load``); version 1 (one extractor) and 2 are read.
            backbone: a fresh backbone module, required when the network was built from a module
                instead of a backbone name (its architecture must match the saved weights; further
                extractors are copies of it).

        The global CPU random generator is left as it was (the throw-away initialisation runs
        on a forked generator).
        """
        config, extractors, aux_outputs = _checked_checkpoint(state)
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
            for _ in range(extractors["count"] - 1):
                net.add_extractor(init="copy", new_columns="zero")
            net.expand_to(state["task_sizes"])
            if aux_outputs is not None:
                net.set_aux_head(aux_outputs)
        net.freeze_extractors([i for i, frozen in enumerate(extractors["frozen"]) if frozen])
        reference = next(iter(state["state_dict"].values()), None)
        if reference is not None:
            net.to(device=reference.device)
        try:
            net.load_state_dict(state["state_dict"], strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"the checkpoint's state_dict does not fit the rebuilt network: {error}") from error
        return net


def _feature_dim(module: nn.Module) -> int:
    feature_dim = getattr(module, "feature_dim", None)
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ModelConfigError(f"the backbone must have an int attribute feature_dim >= 1, got {feature_dim!r}")
    return feature_dim


def _placed_like(module: nn.Module, reference: nn.Module) -> nn.Module:
    """``module`` moved to the device and dtype of ``reference``'s first parameter, channels_last if it is."""
    param = next(reference.parameters(), None)
    if param is None:
        return module
    module = module.to(device=param.device, dtype=param.dtype)
    four_d = [p for p in reference.parameters() if p.dim() == 4]
    if four_d and four_d[0].is_contiguous(memory_format=torch.channels_last) and not four_d[0].is_contiguous():
        module = module.to(memory_format=torch.channels_last)
    return module


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


def _checked_checkpoint(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"state must be a dict from IncrementalNet.checkpoint_state(), got {type(state).__name__}"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"state['format'] must be {CHECKPOINT_FORMAT!r} (a dict from IncrementalNet.checkpoint_state()), "
            f"got {state.get('format')!r}"
        )
    version = state.get("version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise CheckpointError(
            f"state['version'] must be one of {list(_READABLE_VERSIONS)} (the formats this cil-models reads), "
            f"got {version!r}"
        )
    required = {"task_sizes", "config", "state_dict"} | ({"extractors", "aux_head"} if version >= 2 else set())
    missing = required - set(state)
    if missing:
        raise CheckpointError(f"state is missing the keys {sorted(missing)}")
    config = state["config"]
    keys = {"backbone", "head", "in_channels", "head_options", "backbone_options", "bias_correction"}
    if not isinstance(config, Mapping) or set(config) != keys:
        raise CheckpointError(
            f"state['config'] must have exactly the keys {sorted(keys)}, got "
            f"{sorted(config) if isinstance(config, Mapping) else type(config).__name__}"
        )
    if version == 1:
        return dict(config), {"count": 1, "frozen": [False]}, None
    extractors, aux = state["extractors"], state["aux_head"]
    count = extractors.get("count") if isinstance(extractors, Mapping) else None
    frozen = extractors.get("frozen") if isinstance(extractors, Mapping) else None
    if (
        isinstance(count, bool)
        or not isinstance(count, int)
        or count < 1
        or not isinstance(frozen, (list, tuple))
        or len(frozen) != count
        or not all(isinstance(f, bool) for f in frozen)
    ):
        raise CheckpointError(
            f"state['extractors'] must be {{'count': n >= 1, 'frozen': [n bools]}}, got {extractors!r}"
        )
    if aux is not None and (isinstance(aux, bool) or not isinstance(aux, int) or aux < 1):
        raise CheckpointError(f"state['aux_head'] must be None or an int >= 1, got {aux!r}")
    return dict(config), {"count": count, "frozen": list(frozen)}, aux
