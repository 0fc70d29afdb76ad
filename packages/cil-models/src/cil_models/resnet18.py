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

``last_relu=False`` leaves out the ReLU after the residual addition of the last block of
``layer4``, so the pooled features can be negative: LUCIR's ImageNet ResNet-18 (Hou et al.,
CVPR 2019; official ``modified_resnet.py``: ``last=True`` on that block). PODNet's ImageNet
network (Douillard et al., ECCV 2020) also taps its four stage outputs before their ReLU and has
a 3×3 stride-1 stem followed by a max pool; neither is built here (the stage outputs of
:meth:`ResNet18Features.stage_features` are after the ReLU, except the last one with
``last_relu=False``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock

from ._checks import positive_int
from ._memory_format import global_average_pool, grad_like_input


class ResNet18Features(nn.Module):
    """Torchvision ResNet-18 without its classifier: ``forward(x) -> [B, 512]`` pooled features.

    Args:
        in_channels: channels of the input images (1 or 3; any positive number works).
        cifar_stem: replace the 7×7/stride-2 stem and the max pool by a 3×3/stride-1 stem and no
            pooling (the variant for 32×32 inputs).
        zero_init_residual: torchvision's option to start each block's last batch-norm scale at 0.
        last_relu: keep the ReLU after the last block's residual addition (``False``: LUCIR).
    """

    def __init__(
        self, in_channels: int = 3, cifar_stem: bool = False, zero_init_residual: bool = False, last_relu: bool = True
    ) -> None:
        super().__init__()
        positive_int("in_channels", in_channels)
        import torchvision  # here, not at module level: importing it costs about 1 s (it loads torch._dynamo)

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
        self.last_relu = bool(last_relu)

    def _layer4(self, x: Tensor) -> Tensor:
        if self.last_relu:
            return self.layer4(x)
        for block in self.layer4[:-1]:
            x = block(x)
        return _block_without_final_relu(self.layer4[-1], x)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The outputs of the four stages (64, 128, 256 and 512 channels)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            maps.append(x)
        maps.append(self._layer4(x))
        return maps

    def stage_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """``(maps, pooled)``: the four stage outputs (as :meth:`feature_maps`) and the pooled
        features ``[B, 512]`` of the same pass (PODNet's POD-spatial / POD-flat inputs)."""
        maps = [grad_like_input(m) for m in self.feature_maps(x)]
        return maps, maps[-1].mean(dim=(2, 3))

    def features(self, x: Tensor) -> Tensor:
        """Global-average-pooled features ``[B, 512]`` of images ``x`` ``[B, C, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.layer4(x) if self.last_relu else self._layer4(x)
        return global_average_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def extra_repr(self) -> str:
        text = f"in_channels={self.in_channels}, cifar_stem={self.cifar_stem}"
        return text + ("" if self.last_relu else ", last_relu=False")


def _block_without_final_relu(block: TorchvisionBasicBlock, x: Tensor) -> Tensor:
    """Torchvision's ``BasicBlock.forward`` without the ReLU after the residual addition."""
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    identity = x if block.downsample is None else block.downsample(x)
    return out + identity


def resnet18(in_channels: int = 3, **kw: object) -> ResNet18Features:
    """ImageNet-size ResNet-18 (torchvision, no pretrained weights)."""
    return ResNet18Features(in_channels, cifar_stem=False, **kw)  # type: ignore[arg-type]


def resnet18_cifar(in_channels: int = 3, **kw: object) -> ResNet18Features:
    """ResNet-18 for 32×32 inputs: 3×3 stride-1 stem, no max pool."""
    return ResNet18Features(in_channels, cifar_stem=True, **kw)  # type: ignore[arg-type]
