"""cil-models: backbones and expandable heads for class-incremental learning.

* Backbones by name (:func:`build_backbone`, :data:`BACKBONES`): CIFAR ResNet-8/20/32/44/56/110
  (He et al., CVPR 2016; ResNet-32 as in iCaRL/LUCIR/PyCIL), ResNet-18 for 32×32 inputs and the
  torchvision ResNet-18 for ImageNet-size inputs; ``stage_features(x)`` (PODNet's stage maps)
  and the ``last_relu`` (LUCIR) / ``block_relu`` (PODNet) options.
* Heads made of per-phase blocks: :class:`IncrementalLinear`, :class:`CosineLinear` (LUCIR,
  Hou et al., CVPR 2019, with imprinting), :class:`LocalSimilarityHead` (PODNet, Douillard et
  al., ECCV 2020, with :func:`kmeans_proxies` imprinting); the BiC layer :class:`BiasCorrection`
  (Wu et al., CVPR 2019); WA's :func:`weight_align` and :func:`clip_nonnegative_` (Zhao et al.,
  CVPR 2020); iCaRL's :class:`NMEClassifier` (Rebuffi et al., CVPR 2017).
* :class:`IncrementalNet`: feature extractors + head with ``expand``, ``frozen_copy``,
  channels_last and checkpoints that round-trip exactly; several extractors with
  ``add_extractor`` / ``freeze_extractors`` / ``keep_only_extractor`` and an auxiliary head
  (DER, Yan et al., CVPR 2021; FOSTER, Wang et al., ECCV 2022).
* :func:`fold_batch_norms`: a forward-only copy of a frozen network with each batch norm folded
  into the convolution before it (a cheaper teacher).
"""

from .bias_correction import BiasCorrection
from .cifar_resnet import BasicBlock, CifarResNet, cifar_resnet
from .errors import CheckpointError, HeadStateError, ModelConfigError
from .folding import fold_batch_norms
from .heads import CosineLinear, IncrementalHead, IncrementalLinear
from .local_similarity import LocalSimilarityHead, kmeans, kmeans_proxies
from .network import IncrementalNet
from .nme import NMEClassifier, normalized_class_means
from .registry import BACKBONES, build_backbone
from .resnet18 import ResNet18Features, resnet18, resnet18_cifar
from .weight_aligning import clip_nonnegative_, weight_align

__version__ = "0.2.0"

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "BiasCorrection",
    "CheckpointError",
    "CifarResNet",
    "CosineLinear",
    "HeadStateError",
    "IncrementalHead",
    "IncrementalLinear",
    "IncrementalNet",
    "LocalSimilarityHead",
    "ModelConfigError",
    "NMEClassifier",
    "ResNet18Features",
    "__version__",
    "build_backbone",
    "cifar_resnet",
    "fold_batch_norms",
    "kmeans",
    "kmeans_proxies",
    "clip_nonnegative_",
    "normalized_class_means",
    "resnet18",
    "resnet18_cifar",
    "weight_align",
]
