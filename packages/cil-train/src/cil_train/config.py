"""Run configuration: the options every method shares, plus the chosen method's own options.

:class:`RunConfig` is one frozen attrs class whose fields are the shared command-line options (data,
protocol, memory, training, output). The method's options live in ``method_options``, an instance of
the method's own attrs class (``Method.Options``, see :mod:`cil_train.methods`); ``config.json`` stores
them under ``"method_options"``. Wrong values fail at construction with a
:class:`~cil_train.errors.ConfigError` naming the option; rules across fields are checked by
:func:`check_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs

import cil_data

from .errors import ConfigError
from .options import boolean, choice, int_list, number, option, option_name, optional_str, text

__all__ = ["AUGMENT", "DATA_SOURCES", "RunConfig", "check_config", "config_fields", "memory_budget", "option_name"]

DATA_SOURCES = ("embedded", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "npz")
ORDERS = ("seed1993", "ordered", "tail-first")
AUGMENT = ("auto", "crop,flip", "crop", "none")
DEFAULT_PER_CLASS = 20


def _order(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    allowed = "choose one of " + ", ".join(ORDERS) + ", or give an explicit comma-separated class list"
    if isinstance(value, str):
        if value not in ORDERS:
            raise ConfigError(f"{option_name(attribute.name)} {value!r} is not allowed: {allowed}.")
    elif not (isinstance(value, tuple) and value and all(isinstance(v, int) for v in value)):
        raise ConfigError(f"{option_name(attribute.name)} {value!r} is not allowed: {allowed}.")


def _per_class_default(cfg: Any) -> int | None:
    return None if cfg.memory_total is not None else DEFAULT_PER_CLASS


@attrs.frozen(kw_only=True)
class RunConfig:
    """Every option of a run. Defaults give the no-argument experiment: DGR on the embedded
    Fashion-MNIST subset as a long-tailed stream (ρ = 10), 5 phases of 2 classes, 20 exemplars per class,
    ResNet-20, 30 epochs of batch 32 per phase (about 1.5 minutes on 2 CPU cores). The paper protocols
    (``--preset``) set their own backbone, epochs, batch size and schedule."""

    # -- experiment ------------------------------------------------------------------------
    method: str = option("incremental-learning method (see the list of methods below)", text, "dgr", group="experiment")
    preset: str | None = option("named paper protocol or CPU preset; explicit options override it", optional_str,
                                group="experiment")
    # -- data ------------------------------------------------------------------------------
    data: str = option("data source", choice(*DATA_SOURCES), "embedded", group="data")
    data_root: str | None = option(
        "folder of the data (fashion-mnist: IDX files; cifar10/100: folder holding cifar-10-batches-py or "
        "cifar-100-python; imagefolder: root with train/ and val/ or test/; npz: the .npz file)", optional_str,
        group="data")
    image_size: int = option("imagefolder only: images are resized to this square size",
                             number(8, 512, integer=True), 32, group="data")
    augment: str = option("training augmentation: auto (the data source's choice: no flip for character data), "
                          "crop,flip, crop (random crop with 4-pixel padding) or none", choice(*AUGMENT), "auto",
                          group="data")
    order: Any = attrs.field(
        default="seed1993", converter=lambda v: tuple(v) if isinstance(v, list) else v, validator=_order,
        metadata={"group": "data", "kind": "order", "choices": ORDERS,
                  "help": "class order: seed1993 (numpy seed-1993 permutation), ordered (identity, head first), "
                          "tail-first, or an explicit comma-separated list"})
    imbalance: float = option("long-tail imbalance ratio ρ = n_max / n_min (1 = keep every image)", number(1.0), 10.0,
                              group="data")
    profile: str = option("long-tail profile over the class ranking (original labels)", choice("exp", "step"), "exp",
                          group="data")
    images_per_class: int | None = option(
        "n_max of the long tail: training images kept for the head class (with --imbalance 1: for every class, a "
        "balanced subset); default: the smallest class's count", number(1, optional=True, integer=True), group="data")
    lt_seed: int = option("seed of the long-tail subsampling (fixed across --seed, as in the papers)",
                          number(0, integer=True), 0, group="data")
    phases: int = option("number of phases (with --base-classes: the base phase plus phases-1 equal steps)",
                         number(1, integer=True), 5, group="data")
    base_classes: int | None = option("classes in the first phase (LFH / B50 protocols); default: equal splits",
                                      number(1, optional=True, integer=True), group="data")
    increments: Any = option("explicit classes per phase, e.g. 50,10,10,10,10,10 (overrides --phases)", int_list(),
                             group="data")
    # -- memory ----------------------------------------------------------------------------
    memory_total: int | None = option("fixed total memory split equally over seen classes (replaces "
                                      "--memory-per-class)", number(0, optional=True, integer=True), group="memory")
    memory_per_class: int | None = attrs.field(
        default=attrs.Factory(_per_class_default, takes_self=True), validator=number(0, optional=True, integer=True),
        metadata={"group": "memory", "kind": "int", "shown_default": f"{DEFAULT_PER_CLASS}, none with --memory-total",
                  "help": "exemplars per class (growing memory); 0 = no memory"})
    memory_selection: str = option("exemplar selection", choice("herding", "random"), "herding", group="memory")
    # -- training --------------------------------------------------------------------------
    backbone: str = option("feature extractor: resnet8/20/32/44/56/110 (32×32 family), resnet18-cifar, "
                           "resnet18 (ImageNet size), torchvision:<name>, timm:<name> (extra cil-models[timm])", text,
                           "resnet20", group="training")
    backbone_weights: str | None = option("a local weight file for the backbone (state dict or .safetensors), loaded "
                                          "before phase 0; nothing is downloaded", optional_str, group="training")
    epochs: int = option("epochs per phase (with a preset: its --lr-steps are scaled to the same fractions)",
                         number(1, integer=True), 30, group="training")
    base_epochs: int | None = option("epochs of the base phase (default: --epochs); the papers train it longer",
                                     number(1, optional=True, integer=True), group="training")
    phase_steps: int | None = option(
        "optimiser steps of each incremental phase's main stage, the same for every method: its epochs become "
        "round(N / batches per epoch) (at least 1), the --lr-steps scaled to them; default: --epochs",
        number(1, optional=True, integer=True), group="training")
    base_steps: int | None = option("the same for the base phase (default: --base-epochs)",
                                    number(1, optional=True, integer=True), group="training")
    lr: float = option("initial learning rate of each phase (SGD)", number(0.0, lo_open=True), 0.1, group="training")
    base_lr: float | None = option("initial learning rate of the base phase (default: --lr)",
                                   number(0.0, lo_open=True, optional=True), group="training")
    lr_schedule: str = option("schedule within a phase", choice("cosine", "step", "constant"), "cosine",
                              group="training")
    lr_steps: Any = option("epochs at which --lr-schedule step divides the rate, e.g. 80,120 (scaled to the "
                           "base phase's epochs there)", int_list(), group="training")
    lr_decay: float = option("factor of each step of --lr-schedule step", number(0.0, 1.0, lo_open=True), 0.1,
                             group="training")
    momentum: float = option("SGD momentum", number(0.0, 1.0), 0.9, group="training")
    weight_decay: float = option("SGD weight decay", number(0.0), 5e-4, group="training")
    batch_size: int = option("batch size (a method may use its own, e.g. ssil's --ssil-batch-new)",
                             number(1, integer=True), 32, group="training")
    seed: int = option("seed of initialisation, batch order and augmentation", number(0, integer=True), 1993,
                       group="training")
    device: str = option("auto (cuda if available), cpu, cuda, cuda:N", text, "auto", group="training")
    amp: str = option("mixed precision: auto (bf16 where the hardware supports it), bf16, fp16 (cuda; not for "
                      "dgr, podnet*, bsce-meta, whose training does not mix with loss scaling), off",
                      choice("auto", "bf16", "fp16", "off"), "auto", group="training")
    channels_last: bool = option("channels_last memory format", boolean, True, group="training")
    compile: str = option(
        "torch.compile the feature extractors once per run (every phase and the teacher reuse the graphs; the head "
        "stays eager): on, off, or auto = on where it was measured to pay: on a CPU, for runs of at least 500,000 "
        "planned training images in float32 (bf16 runs stay eager; see cil_train.compilation); --compile alone = on",
        choice("auto", "on", "off"), "auto", group="training", flag_value="on", false_value="off")
    base_checkpoint: str | None = option(
        "a file holding the base model (phase 0): loaded instead of training phase 0 when it exists (it must have "
        "been trained with the same base phase: checked), else written after phase 0; one base model per "
        "protocol and seed shared by every method whose phase 0 is plain cross-entropy", optional_str,
        group="training")
    base_cache: str | None = option(
        "a folder of base models named by their base phase (method or plain-ce, seed, hash of everything that "
        "decides phase 0): phase 0 is loaded from it when a run with the same base phase wrote it, else trained "
        "and written there; so the plain-CE methods of a matrix share one base model per seed, and the variants "
        "of another method that differ only in options of the later phases share that method's; a method whose "
        "phase 0 cannot be stored trains it as usual", optional_str, group="training")
    threads: int | None = option("CPU threads for torch (default: torch's choice)",
                                 number(1, optional=True, integer=True), group="training")
    fold_bn: bool = option(
        "run the forward passes that need no gradients (the teacher's, evaluation, feature extraction for herding "
        "and class means) on a copy with each batch norm folded into the convolution before it: the same function "
        "up to rounding, one pass over each feature map fewer (cil_models.fold_batch_norms); not with --compile, "
        "whose graphs are shared by the student, the teacher and evaluation", boolean, True, group="training")
    eval_batch_size: int | None = option(
        "batch size of evaluation and feature extraction (default: 256 on a CPU, where `hatch run bench eval` found "
        "128-256 fastest and 512 up to 1.4x slower, float32 and bf16; 512 on a GPU, not measured)",
        number(1, optional=True, integer=True), group="training")
    nme: bool = option("also evaluate nearest-mean-of-exemplars (methods that report it do so anyway)", boolean, False,
                       group="training")
    # -- output ----------------------------------------------------------------------------
    out: str | None = option("run folder (default: runs/<date>-<time>-<method>-<data>)", optional_str, group="output")
    resume: str | None = option("continue the run in this folder from its last checkpoint", optional_str,
                                group="output")
    checkpoint_every: int = option("write a checkpoint every N epochs (and at each phase end); 0 = phase ends only",
                                   number(0, integer=True), 1, group="output")
    plots: bool = option("write PNG plots (needs matplotlib: pip install 'cil-train[plots]')", boolean, True,
                         group="output")
    progress: str = option("progress output: bar (on a terminal), line (one line per epoch), none",
                           choice("auto", "bar", "line", "none"), "auto", group="output")
    log: str = option("extra log beside metrics.json/.csv: none, or tensorboard (event files in RUN/tensorboard: "
                      "losses, learning rate, accuracies, accuracy matrix; pip install 'cil-train[tensorboard]')",
                      choice("none", "tensorboard"), "none", group="output")
    # -- the method's own options (an instance of its Options class; defaults when not given) --
    method_options: Any = attrs.field(default=None, eq=True, metadata={"group": "internal"})

    def __attrs_post_init__(self) -> None:
        from .methods import method_class

        cls = method_class(self.method)  # the one place a method name is validated
        opts = self.method_options
        if opts is None:
            opts = cls.Options()
        elif isinstance(opts, dict):
            opts = cls.options_from_dict(opts)
        elif not isinstance(opts, cls.Options):
            raise ConfigError(f"method_options must be {cls.__name__}.Options or a dict for --method {self.method}, "
                              f"got {type(opts).__name__}")
        object.__setattr__(self, "method_options", opts)

    # ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; the method's options under ``"method_options"``."""
        out = {f.name: _plain(getattr(self, f.name)) for f in config_fields()}
        out["method_options"] = {k: _plain(v) for k, v in attrs.asdict(self.method_options).items()}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """The inverse of :meth:`to_dict`. Also reads the flat ``config.json`` of cil-train 0.1, where
        each method option was a top-level key."""
        from .methods import method_class

        values = dict(values)
        shared = {f.name for f in config_fields()}
        method = values.get("method", "dgr")
        method_values = dict(values.pop("method_options", None) or {})
        own = {f.name for f in attrs.fields(method_class(method).Options)} if isinstance(method, str) else set()
        legacy = {k: values.pop(k) for k in list(values) if k not in shared and k in _legacy_method_keys()}
        method_values.update({k: v for k, v in legacy.items() if k in own})
        unknown = sorted(set(values) - shared)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(option_name(u) for u in unknown)}")
        return cls(**values, method_options=method_values)

    def replace(self, **changes: Any) -> "RunConfig":
        if "method" in changes and "method_options" not in changes:
            changes["method_options"] = None
        return attrs.evolve(self, **changes)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _legacy_method_keys() -> set[str]:
    from .methods import all_option_fields

    return set(all_option_fields())


def config_fields() -> Sequence[attrs.Attribute]:
    """The shared options (``method_options`` excluded)."""
    return [f for f in attrs.fields(RunConfig) if f.name != "method_options"]


def memory_budget(cfg: RunConfig) -> cil_data.MemoryBudget | None:
    """The run's exemplar budget (None: no memory), from the one rule in :func:`cil_data.MemoryBudget.from_options`;
    an exemplar-free method has none."""
    from .methods import method_class

    if method_class(cfg.method).memory == "none":
        return None
    try:
        return cil_data.MemoryBudget.from_options(per_class=cfg.memory_per_class, total=cfg.memory_total)
    except cil_data.DataError as exc:
        raise ConfigError(f"--memory-per-class/--memory-total: {exc}") from exc


def check_config(cfg: RunConfig) -> None:
    """Rules across fields, checked once before anything is loaded or trained."""
    from .methods import method_class

    method = method_class(cfg.method)
    if cfg.data in ("cifar10", "cifar100", "imagefolder", "npz") and not cfg.data_root:
        raise ConfigError(
            f"--data {cfg.data} needs --data-root: the folder (for npz: the file) that holds the data; "
            "nothing is downloaded."
        )
    from cil_models import ModelConfigError
    from cil_models.registry import check_backbone_name

    try:
        check_backbone_name(cfg.backbone)
    except ModelConfigError as exc:
        raise ConfigError(f"--backbone {cfg.backbone!r}: {exc}.") from exc
    if cfg.backbone_weights is not None and not Path(cfg.backbone_weights).is_file():
        raise ConfigError(f"--backbone-weights {cfg.backbone_weights!r}: no such file (a local state dict or "
                          ".safetensors file; nothing is downloaded).")
    budget = memory_budget(cfg)
    if method.memory == "required" and budget is None:
        raise ConfigError(
            f"--method {cfg.method} needs an exemplar memory: give --memory-per-class N (N ≥ 1) or --memory-total N."
        )
    if cfg.lr_schedule == "step" and not cfg.lr_steps:
        raise ConfigError("--lr-schedule step needs --lr-steps, e.g. --lr-steps 80,120.")
    if cfg.lr_steps and any(s < 1 or s >= cfg.epochs for s in cfg.lr_steps):
        raise ConfigError(f"--lr-steps {','.join(map(str, cfg.lr_steps))}: every step must lie in "
                          f"1..{cfg.epochs - 1} (--epochs {cfg.epochs}).")
    if cfg.base_checkpoint and cfg.base_cache:
        raise ConfigError("--base-checkpoint and --base-cache are exclusive: the cache names the file itself.")
    if cfg.increments is not None and (cfg.base_classes is not None):
        raise ConfigError("--increments and --base-classes are exclusive: --increments already fixes the first phase.")
    if cfg.amp == "fp16" and not cfg.device.startswith("cuda") and cfg.device != "auto":
        raise ConfigError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off.")
    if cfg.amp == "fp16" and method.no_fp16:
        raise ConfigError(f"--amp fp16 cannot train --method {cfg.method}: {method.no_fp16}. Use --amp bf16 or "
                          "--amp off.")
    if cfg.log == "tensorboard":
        from .tblog import check_tensorboard

        check_tensorboard()
    method.check_options(cfg)
