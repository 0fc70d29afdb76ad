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

ReLUs after the residual additions (``last_relu=``, ``block_relu=``):

* ``last_relu=False``: no ReLU after the residual addition of the *last block of the last
  stage*, so the pooled features can be negative. This is LUCIR's modified ResNet-32 (Hou et
  al., CVPR 2019; official ``modified_resnet_cifar.py``: ``last=True`` on that block only).
* ``block_relu=False``: no ReLU after *any* residual addition (PODNet's CIFAR ResNet-32,
  Douillard et al., ECCV 2020; official ``inclearn/convnet/my_resnet.py``: ``last_relu=False``
  on every block and ``Stage(block_relu=False)``); implies ``last_relu=False``. PODNet's extra
  ``stage_4`` block is not built here (LT-CIL's PODNet taps the 3 stages, as here).

:meth:`CifarResNet.stage_features` returns the three stage outputs and the pooled features from
one pass (PODNet's POD-spatial and POD-flat inputs); :meth:`CifarResNet.features` stays the
plain fast path.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import one_of, positive_int
from ._memory_format import global_average_pool, grad_like_input
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
        x = grad_like_input(x)  # the strided slice's backward would give the gradient in NCHW
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
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` (He et al. 2016, Fig. 2).

    With ``relu_out=False`` the final ReLU (after the addition) is left out (LUCIR's last block,
    PODNet's blocks).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A", relu_out: bool = True
    ) -> None:
        super().__init__()
        self.relu_out = bool(relu_out)
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
        if not self.relu_out:
            return out + self.shortcut(x)
        return F.relu(out + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n+2`` returning globally pooled features ``[B, 64]``.

    Args:
        depth: 8, 20, 32, 44, 56, 110, ... (any ``6n+2`` with ``n >= 1``).
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR).
        shortcut: ``"A"`` (zero-padded identity, default, as PyCIL/iCaRL) or ``"B"`` (1×1 conv + BN).
        zero_init_residual: start every block's last batch-norm scale at 0 (off by default).
        last_relu: keep the ReLU after the last block's residual addition (``False``: LUCIR).
        block_relu: keep the ReLU after every residual addition (``False``: PODNet; implies
            ``last_relu=False``).
    """

    def __init__(
        self,
        depth: int = 32,
        in_channels: int = 3,
        shortcut: str = "A",
        zero_init_residual: bool = False,
        last_relu: bool = True,
        block_relu: bool = True,
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
        self.block_relu = bool(block_relu)
        self.last_relu = bool(last_relu) and self.block_relu
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages = []
        width_in = STAGE_WIDTHS[0]
        for index, width in enumerate(STAGE_WIDTHS):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(width_in, width, stride, shortcut, self.block_relu)]
            blocks += [BasicBlock(width, width, 1, shortcut, self.block_relu) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            width_in = width
        self.stage1, self.stage2, self.stage3 = stages
        stages[-1][-1].relu_out = self.last_relu
        self.feature_dim = STAGE_WIDTHS[-1]
        _init_resnet_weights(self, zero_init_residual)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The outputs of the three stages (``[B,16,H,W]``, ``[B,32,H/2,W/2]``, ``[B,64,H/4,W/4]``)."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x1 = self.stage1(x)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        return [x1, x2, x3]

    def stage_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """``(maps, pooled)``: the three stage outputs (as :meth:`feature_maps`) and the pooled
        features ``[B, feature_dim]`` of the same pass (PODNet's POD-spatial / POD-flat inputs)."""
        maps = [grad_like_input(m) for m in self.feature_maps(x)]
        return maps, maps[-1].mean(dim=(2, 3))

    def features(self, x: Tensor) -> Tensor:
        """Global-average-pooled features ``[B, feature_dim]`` of images ``x`` ``[B, C, H, W]``."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.stage3(self.stage2(self.stage1(x)))
        return global_average_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def extra_repr(self) -> str:
        text = f"depth={self.depth}, in_channels={self.in_channels}, shortcut={self.shortcut_type!r}"
        if not self.block_relu:
            return text + ", block_relu=False"
        return text + ("" if self.last_relu else ", last_relu=False")


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
