"""CIFAR ResNets of depth 6n+2 (ResNet-8/20/32/44/56/110) as feature extractors.

The architecture is the CIFAR family of He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, Sec. 4.2: a 3×3 convolution with 16 channels, then three stages of
``n`` basic blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 halves the
resolution), then global average pooling. ResNet-32 (n = 5) is the standard backbone of
class-incremental learning on CIFAR-100 since iCaRL (Rebuffi et al., CVPR 2017), used by LUCIR,
BiC, WA, PyCIL and the long-tailed CIL papers this project implements.

Shortcut when the shape changes (``shortcut=``):

* ``"A"`` (default): the identity subsampled with stride 2 and zero-padded in the channel
  dimension — no parameters. This is He et al.'s option A, the one of the 0.46 M-parameter
  ResNet-32 of their Table 6, and the one PyCIL's ``resnet32`` uses (its ``DownsampleA``
  subsamples and appends zero channels after the existing ones, as done here).
  ResNet-32 has 463,504 parameters with 3 input channels (without a classifier).
* ``"B"``: a 1×1 strided convolution followed by batch normalisation (option B), +2,752
  parameters for ResNet-32.

Weights are initialised as in PyCIL / He et al.: convolutions from
``N(0, 2 / (k·k·out_channels))`` (Kaiming normal, fan-out), batch-norm scale 1 and shift 0.
The final pooling is a mean over all spatial positions, so any input size works (28×28
Fashion-MNIST gives 7×7 maps in the last stage, 32×32 CIFAR gives 8×8).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import one_of, positive_int
from .errors import ModelConfigError

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` followed by ``out - in`` zero channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ModelConfigError(
                f"out_channels must be >= in_channels for a zero-padding shortcut, got {out_channels} < {in_channels}"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad on the channel dimension keeps channels_last tensors channels_last.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class ProjectionShortcut(nn.Sequential):
    """Option-B shortcut: 1×1 convolution with the block's stride, then batch normalisation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` (He et al. 2016, Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = ProjectionShortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n+2`` returning globally pooled features ``[B, 64]``.

    Args:
        depth: 8, 20, 32, 44, 56, 110, ... (any ``6n+2`` with ``n >= 1``).
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR).
        shortcut: ``"A"`` (zero-padded identity, default, as PyCIL/iCaRL) or ``"B"`` (1×1 conv + BN).
        zero_init_residual: start every block's last batch-norm scale at 0 (off by default).
    """

    def __init__(
        self, depth: int = 32, in_channels: int = 3, shortcut: str = "A", zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        positive_int("depth", depth)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ModelConfigError(f"depth must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110, ...), got {depth}")
        positive_int("in_channels", in_channels)
        one_of("shortcut", shortcut, SHORTCUTS)
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.in_channels = in_channels
        self.shortcut_type = shortcut
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages = []
        width_in = STAGE_WIDTHS[0]
        for index, width in enumerate(STAGE_WIDTHS):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(width_in, width, stride, shortcut)]
            blocks += [BasicBlock(width, width, 1, shortcut) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            width_in = width
        self.stage1, self.stage2, self.stage3 = stages
        self.feature_dim = STAGE_WIDTHS[-1]
        _init_resnet_weights(self, zero_init_residual)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The outputs of the three stages (``[B,16,H,W]``, ``[B,32,H/2,W/2]``, ``[B,64,H/4,W/4]``)."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x1 = self.stage1(x)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        return [x1, x2, x3]

    def features(self, x: Tensor) -> Tensor:
        """Global-average-pooled features ``[B, feature_dim]`` of images ``x`` ``[B, C, H, W]``."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.stage3(self.stage2(self.stage1(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, in_channels={self.in_channels}, shortcut={self.shortcut_type!r}"


def _init_resnet_weights(module: nn.Module, zero_init_residual: bool) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, batch norms at scale 1 / shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def cifar_resnet(depth: int, in_channels: int = 3, **kw: object) -> CifarResNet:
    """A CIFAR ResNet of ``depth = 6n+2`` (see :class:`CifarResNet` for the options)."""
    return CifarResNet(depth, in_channels, **kw)  # type: ignore[arg-type]
