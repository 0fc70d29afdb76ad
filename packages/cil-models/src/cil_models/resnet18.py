"""ResNet-18 feature extractors built from torchvision's ResNet (He et al., CVPR 2016).

* ``resnet18``: the ImageNet ResNet-18 (7×7 stride-2 stem, 3×3 max pool), the backbone of the
  ImageNet-Subset / Food-101-LT protocols. 11,176,512 parameters without the classifier.
* ``resnet18-cifar``: the same body with the stem used for 32×32 inputs in class-incremental
  learning code (PyCIL's ``resnet18`` for CIFAR, and most CIFAR ResNet-18 baselines): a 3×3
  stride-1 convolution and no max pool, so a 32×32 image reaches the last stage at 4×4.
  11,168,832 parameters without the classifier.

Weights are never downloaded (``weights=None``): torchvision's initialisation is used
(Kaiming-normal fan-out convolutions, batch norms at 1/0). With ``in_channels != 3`` the stem
convolution is replaced by one with that many input channels, initialised the same way.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

from ._checks import positive_int


class ResNet18Features(nn.Module):
    """Torchvision ResNet-18 without its classifier: ``forward(x) -> [B, 512]`` pooled features.

    Args:
        in_channels: channels of the input images (1 or 3; any positive number works).
        cifar_stem: replace the 7×7/stride-2 stem and the max pool by a 3×3/stride-1 stem and no
            pooling (the variant for 32×32 inputs).
        zero_init_residual: torchvision's option to start each block's last batch-norm scale at 0.
    """

    def __init__(self, in_channels: int = 3, cifar_stem: bool = False, zero_init_residual: bool = False) -> None:
        super().__init__()
        positive_int("in_channels", in_channels)
        net = torchvision.models.resnet18(weights=None, zero_init_residual=zero_init_residual)
        self.in_channels = in_channels
        self.cifar_stem = bool(cifar_stem)
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = (
                net.conv1
                if in_channels == 3
                else nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            )
            self.maxpool = net.maxpool
        if self.conv1 is not net.conv1:
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = net.bn1
        self.relu = net.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The outputs of the four stages (64, 128, 256 and 512 channels)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def features(self, x: Tensor) -> Tensor:
        """Global-average-pooled features ``[B, 512]`` of images ``x`` ``[B, C, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, cifar_stem={self.cifar_stem}"


def resnet18(in_channels: int = 3, **kw: object) -> ResNet18Features:
    """ImageNet-size ResNet-18 (torchvision, no pretrained weights)."""
    return ResNet18Features(in_channels, cifar_stem=False, **kw)  # type: ignore[arg-type]


def resnet18_cifar(in_channels: int = 3, **kw: object) -> ResNet18Features:
    """ResNet-18 for 32×32 inputs: 3×3 stride-1 stem, no max pool."""
    return ResNet18Features(in_channels, cifar_stem=True, **kw)  # type: ignore[arg-type]
