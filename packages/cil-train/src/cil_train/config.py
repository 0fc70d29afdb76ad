"""Run configuration: one frozen attrs class whose fields are the CLI options.

Every field carries its help text, its group and (where it has one) its set of allowed values in
``metadata``; the CLI is generated from these fields, so ``--help`` and the defaults cannot drift
apart. A wrong value fails at construction with a :class:`~cil_train.errors.ConfigError` that names the
option, the value and what is allowed. Cross-field rules (e.g. ``ssil`` needs a memory) are checked in
:func:`check_config` once the method is known.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs

from .errors import ConfigError

__all__ = ["DATA_SOURCES", "RunConfig", "check_config", "config_fields", "option_name"]

DATA_SOURCES = ("embedded", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "npz")
ORDERS = ("seed1993", "ordered", "tail-first")


def option_name(field_name: str) -> str:
    """The CLI spelling of a field: ``memory_per_class`` → ``--memory-per-class``."""
    return "--" + field_name.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# validators: each raises ConfigError naming the option
def _fail(attribute: attrs.Attribute, value: Any, allowed: str) -> None:
    raise ConfigError(f"{option_name(attribute.name)} {value!r} is not allowed: {allowed}.")


def _choice(*allowed: str) -> Callable:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in allowed:
            _fail(attribute, value, "choose one of " + ", ".join(allowed))

    check.choices = allowed  # type: ignore[attr-defined]
    return check


def _number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, optional: bool = False,
            integer: bool = False) -> Callable:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            _fail(attribute, value, f"it must be {kind}")
        if value != value:  # NaN
            _fail(attribute, value, f"it must be {kind}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            _fail(attribute, value, f"it must be {'>' if lo_open else '≥'} {lo}" + (f" and ≤ {hi}" if hi is not None else ""))
        if hi is not None and value > hi:
            _fail(attribute, value, f"it must be ≤ {hi}" + (f" and {'>' if lo_open else '≥'} {lo}" if lo is not None else ""))

    return check


def _int_list(optional: bool = True) -> Callable:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            _fail(attribute, value, "give comma-separated integers, e.g. 80,120")

    return check


def _order(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, str):
        if value not in ORDERS:
            _fail(attribute, value, "choose one of " + ", ".join(ORDERS) + ", or give an explicit comma-separated class list")
    elif not (isinstance(value, tuple) and value and all(isinstance(v, int) for v in value)):
        _fail(attribute, value, "choose one of " + ", ".join(ORDERS) + ", or give an explicit comma-separated class list")


def _is_bool(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(attribute, value, "it must be true or false")


def _opt_str(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        _fail(attribute, value, "it must be a string")


def _str(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value:
        _fail(attribute, value, "it must be a non-empty string")


def _opt(group: str, help: str, validator: Callable | None = None, default: Any = None, **extra: Any) -> Any:
    meta = {"group": group, "help": help, **extra}
    if validator is not None and hasattr(validator, "choices"):
        meta["choices"] = validator.choices
    return attrs.field(default=default, validator=validator, metadata=meta)


def _tuple_or_none(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return value


# ---------------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class RunConfig:
    """Every option of a run. Defaults give the no-argument experiment: DGR on the embedded
    Fashion-MNIST subset as a long-tailed stream (ρ = 10), 5 phases of 2 classes, 20 exemplars per class,
    ResNet-20, 30 epochs of batch 32 per phase (about 1.5 minutes on 2 CPU cores). The paper protocols
    (``--preset``) set their own backbone, epochs, batch size and schedule."""

    # -- experiment ------------------------------------------------------------------------
    method: str = _opt("experiment", "incremental-learning method (see the list of methods below)", _str, "dgr")
    preset: str | None = _opt("experiment", "named paper protocol or CPU preset; explicit options override it", _opt_str)
    data: str = _opt("data", "data source", _choice(*DATA_SOURCES), "embedded")
    data_root: str | None = _opt(
        "data", "folder of the data (fashion-mnist: IDX files; cifar10/100: folder holding cifar-10-batches-py or "
        "cifar-100-python; imagefolder: root with train/ and val/ or test/; npz: the .npz file)", _opt_str)
    image_size: int = _opt("data", "imagefolder only: images are resized to this square size", _number(8, 512, integer=True), 32)
    order: Any = attrs.field(
        default="seed1993", converter=_tuple_or_none, validator=_order,
        metadata={"group": "data", "help": "class order: seed1993 (numpy seed-1993 permutation), ordered (identity, "
                  "head first), tail-first, or an explicit comma-separated list", "choices": ORDERS})
    imbalance: float = _opt("data", "long-tail imbalance ratio ρ = n_max / n_min (1 = keep every image)",
                            _number(1.0), 10.0)
    profile: str = _opt("data", "long-tail profile over the class ranking (original labels)", _choice("exp", "step"), "exp")
    lt_seed: int = _opt("data", "seed of the long-tail subsampling (fixed across --seed, as in the papers)",
                        _number(0, integer=True), 0)
    phases: int = _opt("data", "number of phases (with --base-classes: the base phase plus phases-1 equal steps)",
                       _number(1, integer=True), 5)
    base_classes: int | None = _opt("data", "classes in the first phase (LFH / B50 protocols); default: equal splits",
                                    _number(1, optional=True, integer=True))
    increments: Any = attrs.field(
        default=None, converter=_tuple_or_none, validator=_int_list(),
        metadata={"group": "data", "help": "explicit classes per phase, e.g. 50,10,10,10,10,10 (overrides --phases)"})
    memory_per_class: int | None = _opt("memory", "exemplars per class (growing memory); 0 = no memory",
                                        _number(0, optional=True, integer=True), 20)
    memory_total: int | None = _opt("memory", "fixed total memory split equally over seen classes (replaces --memory-per-class)",
                                    _number(0, optional=True, integer=True))
    memory_selection: str = _opt("memory", "exemplar selection", _choice("herding", "random"), "herding")

    # -- training --------------------------------------------------------------------------
    backbone: str = _opt("training", "feature extractor: resnet8/20/32/44/56/110 (32×32 family), resnet18-cifar, "
                         "resnet18 (ImageNet size)", _str, "resnet20")
    epochs: int = _opt("training", "epochs per phase (with a preset: its --lr-steps are scaled to the same fractions)",
                       _number(1, integer=True), 30)
    lr: float = _opt("training", "initial learning rate of each phase (SGD)", _number(0.0, lo_open=True), 0.1)
    lr_schedule: str = _opt("training", "schedule within a phase", _choice("cosine", "step", "constant"), "cosine")
    lr_steps: Any = attrs.field(
        default=None, converter=_tuple_or_none, validator=_int_list(),
        metadata={"group": "training", "help": "epochs at which --lr-schedule step divides the rate, e.g. 80,120"})
    lr_decay: float = _opt("training", "factor of each step of --lr-schedule step", _number(0.0, 1.0, lo_open=True), 0.1)
    momentum: float = _opt("training", "SGD momentum", _number(0.0, 1.0), 0.9)
    weight_decay: float = _opt("training", "SGD weight decay", _number(0.0), 5e-4)
    batch_size: int = _opt("training", "batch size (ssil: see --ssil-batch-new/--ssil-batch-memory)",
                           _number(1, integer=True), 32)
    seed: int = _opt("training", "seed of initialisation, batch order and augmentation", _number(0, integer=True), 1993)
    device: str = _opt("training", "auto (cuda if available), cpu, cuda, cuda:N", _str, "auto")
    amp: str = _opt("training", "mixed precision: auto (bf16 where the hardware supports it), bf16, fp16 (cuda), off",
                    _choice("auto", "bf16", "fp16", "off"), "auto")
    channels_last: bool = _opt("training", "channels_last memory format", _is_bool, True)
    compile: bool = _opt("training", "torch.compile the network (pays on long runs; first epoch slower)", _is_bool, False)
    threads: int | None = _opt("training", "CPU threads for torch (default: torch's choice)", _number(1, optional=True, integer=True))
    eval_batch_size: int = _opt("training", "batch size of evaluation and feature extraction", _number(1, integer=True), 512)

    # -- output ----------------------------------------------------------------------------
    out: str | None = _opt("output", "run folder (default: runs/<date>-<time>-<method>-<data>)", _opt_str)
    resume: str | None = _opt("output", "continue the run in this folder from its last checkpoint", _opt_str)
    checkpoint_every: int = _opt("output", "write a checkpoint every N epochs (and at each phase end); 0 = phase ends only",
                                 _number(0, integer=True), 1)
    plots: bool = _opt("output", "write PNG plots (needs matplotlib: pip install 'cil-train[plots]')", _is_bool, True)
    progress: str = _opt("output", "progress output: bar (on a terminal), line (one line per epoch), none",
                         _choice("auto", "bar", "line", "none"), "auto")

    # -- method options --------------------------------------------------------------------
    kd_temperature: float = _opt("methods", "distillation temperature T (all methods)", _number(0.0, lo_open=True), 2.0)
    bsce_alpha: float = _opt("methods", "bsce: weight α of old classes in λ_c = α·n_c", _number(0.0, 1.0, lo_open=True), 1.0)
    relaxed_eps: float | None = _opt("methods", "bsce-relaxed: λ of old classes (default 0.2 % of the mean class count)",
                                     _number(0.0, optional=True))
    meta_interval: int = _opt("methods", "bsce-meta: update α every k steps", _number(1, integer=True), 10)
    meta_lr: float = _opt("methods", "bsce-meta: learning rate of α", _number(0.0, lo_open=True), 0.01)
    meta_scope: str = _opt("methods", "bsce-meta: look-ahead over the whole network or the classifier only",
                           _choice("network", "classifier"), "network")
    lwf_lambda: float = _opt("methods", "lwf: weight of the distillation term", _number(0.0), 3.0)
    ssil_batch_new: int = _opt("methods", "ssil: new-data samples per batch (B_n)", _number(1, integer=True), 128)
    ssil_batch_memory: int = _opt("methods", "ssil: memory samples per batch (B_r)", _number(1, integer=True), 32)
    ssil_tkd: bool = _opt("methods", "ssil: task-wise KD (ICCV version); false = the earlier plain-KD variant", _is_bool, True)
    jioc: str = _opt("methods", "icarl-jioc ablation: both (L_JIOC), ic (L_IC + KD), oc (CE + L_OC + L_sup), none (CE + KD)",
                     _choice("both", "ic", "oc", "none"), "both")
    jioc_gamma1: float = _opt("methods", "icarl-jioc: weight γ1 of output coordination", _number(0.0), 1.0)
    jioc_gamma2: float = _opt("methods", "icarl-jioc: weight γ2 of new-head suppression", _number(0.0), 1.0)
    jioc_detach: bool = _opt("methods", "icarl-jioc: detach the input-coordination weight δ", _is_bool, True)
    jioc_normalize: bool = _opt("methods", "icarl-jioc: normalise δ to mean 1 over the batch", _is_bool, False)
    jioc_squared: bool = _opt("methods", "icarl-jioc: squared suppression variant", _is_bool, False)
    dgr_dakd: bool = _opt("methods", "dgr: distribution-aware KD (false: plain KD)", _is_bool, True)
    dgr_decouple: bool = _opt("methods", "dgr: decoupled class balance (false: GR, one group over all classes)", _is_bool, True)
    dgr_regularized_softmax: bool = _opt("methods", "dgr: regularised softmax (false: plain CE)", _is_bool, True)
    dgr_offsets: str = _opt("methods", "dgr: regularised-softmax offsets from class counts or accumulated gradients",
                            _choice("log_prior", "grad"), "log_prior")
    dgr_eta: float = _opt("methods", "dgr: attenuation strength η of the task-balance ratio", _number(0.0), 1.0)
    wa_p: float = _opt("methods", "wa: norm p of weight aligning", _number(0.0, lo_open=True), 2.0)
    wa_clamp: bool = _opt("methods", "wa: clamp γ ≤ 1 (authors' code)", _is_bool, False)
    wa_clip: bool = _opt("methods", "wa: clip FC weights to ≥ 0 after every step (authors' code)", _is_bool, False)
    wa_t_squared: bool = _opt("methods", "wa: T² factor on the KD term", _is_bool, False)
    nme: bool = _opt("methods", "also evaluate nearest-mean-of-exemplars (always on for icarl)", _is_bool, False)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(option_name(u) for u in unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "RunConfig":
        return attrs.evolve(self, **changes)


def config_fields() -> Sequence[attrs.Attribute]:
    return attrs.fields(RunConfig)


def check_config(cfg: RunConfig, method_names: Sequence[str], memory_policy: str | None) -> None:
    """Rules across fields. ``memory_policy`` is the method's: "required", "optional" or "none"."""
    if cfg.method not in method_names:
        raise ConfigError(f"--method {cfg.method!r} is not a known method: choose one of {', '.join(method_names)}.")
    if cfg.data in ("cifar10", "cifar100", "imagefolder", "npz") and not cfg.data_root:
        raise ConfigError(
            f"--data {cfg.data} needs --data-root: the folder (for npz: the file) that holds the data; "
            "nothing is downloaded."
        )
    if cfg.memory_total is not None and cfg.memory_per_class not in (None, 0, 20):
        raise ConfigError("--memory-total and --memory-per-class are exclusive: give one of them.")
    has_memory = bool(cfg.memory_total) or (cfg.memory_total is None and bool(cfg.memory_per_class))
    if memory_policy == "required" and not has_memory:
        raise ConfigError(
            f"--method {cfg.method} needs an exemplar memory: give --memory-per-class N (N ≥ 1) or --memory-total N."
        )
    if cfg.lr_schedule == "step" and not cfg.lr_steps:
        raise ConfigError("--lr-schedule step needs --lr-steps, e.g. --lr-steps 80,120.")
    if cfg.lr_steps and any(s < 1 or s >= cfg.epochs for s in cfg.lr_steps):
        raise ConfigError(f"--lr-steps {','.join(map(str, cfg.lr_steps))}: every step must lie in 1..{cfg.epochs - 1} (--epochs {cfg.epochs}).")
    if cfg.increments is not None and (cfg.base_classes is not None):
        raise ConfigError("--increments and --base-classes are exclusive: --increments already fixes the first phase.")
    if cfg.amp == "fp16" and not cfg.device.startswith("cuda") and cfg.device != "auto":
        raise ConfigError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off.")
