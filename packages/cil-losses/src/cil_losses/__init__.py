"""cil-losses: balancing and distillation losses for imbalanced class-incremental learning.

Functional API (this module, like ``torch.nn.functional``) and thin ``nn.Module`` wrappers in
:mod:`cil_losses.nn`. Depends on torch only. The mathematics follows METHODS.md of the cil project;
every function's docstring gives its formula and paper.
"""

from __future__ import annotations

from . import nn
from .balanced import (
    DEFAULT_MIN_LAMBDA,
    balanced_softmax_cross_entropy,
    balanced_softmax_offsets,
    logit_adjusted_cross_entropy,
    relaxed_eps_default,
)
from .cosine_family import (
    less_forget_loss,
    lucir_lambda,
    margin_ranking_loss,
    pod_flat_loss,
    pod_spatial_loss,
    podnet_lambdas,
    podnet_nca_loss,
)
from .dgr import (
    dakd_loss,
    dgr_attenuation_gamma,
    dgr_class_balance,
    dgr_class_weights,
    dgr_kd_weight,
    dgr_loss_balance,
    dgr_task_balance,
    regularized_softmax_offsets,
)
from .distillation import kd_loss, output_coordination_kd, segmented_kd, task_wise_kd
from .expansion import aux_targets, auxiliary_loss, balanced_kd, effective_number_weights, logits_alignment_cross_entropy
from .errors import LossArgumentError, LossTypeError, PhaseStateError
from .gradient_reweighting import GradientReweighter, reweighted_linear
from .jioc import input_coordination_ce, jioc_loss, new_head_suppression
from .segments import parse_boundaries, segmented_log_softmax
from .ssil import separated_softmax_cross_entropy

__version__ = "1.0.0"

__all__ = [
    "DEFAULT_MIN_LAMBDA",
    "GradientReweighter",
    "LossArgumentError",
    "LossTypeError",
    "PhaseStateError",
    "__version__",
    "aux_targets",
    "auxiliary_loss",
    "balanced_kd",
    "balanced_softmax_cross_entropy",
    "balanced_softmax_offsets",
    "dakd_loss",
    "dgr_attenuation_gamma",
    "dgr_class_balance",
    "dgr_class_weights",
    "dgr_kd_weight",
    "dgr_loss_balance",
    "dgr_task_balance",
    "effective_number_weights",
    "input_coordination_ce",
    "jioc_loss",
    "kd_loss",
    "less_forget_loss",
    "logit_adjusted_cross_entropy",
    "logits_alignment_cross_entropy",
    "lucir_lambda",
    "margin_ranking_loss",
    "new_head_suppression",
    "nn",
    "output_coordination_kd",
    "parse_boundaries",
    "pod_flat_loss",
    "pod_spatial_loss",
    "podnet_lambdas",
    "podnet_nca_loss",
    "regularized_softmax_offsets",
    "relaxed_eps_default",
    "reweighted_linear",
    "segmented_kd",
    "segmented_log_softmax",
    "separated_softmax_cross_entropy",
    "task_wise_kd",
]
