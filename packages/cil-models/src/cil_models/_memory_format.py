"""Keep the gradient of a channels_last activation in channels_last (internal).

Autograd gives the gradient of a reduction (``x.mean(dim=(2, 3))``, a sum over the width) as an expanded or
NCHW-contiguous tensor. Where no ReLU follows (LUCIR's last block, every block of PODNet's ResNet), that
gradient reaches the batch-norm backward in NCHW while the saved activation is channels_last, and the CPU
kernel for mixed formats is several times slower (PODNet's step: 1.6× iCaRL's on an AMX host, bf16). The
values are untouched; only the layout of the gradient changes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _GradLikeInput(torch.autograd.Function):
    """Identity; its backward returns the gradient channels_last (applied to channels_last inputs only)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def grad_like_input(x: Tensor) -> Tensor:
    """``x`` itself in the forward pass; in the backward pass its gradient takes ``x``'s channels_last format."""
    if not (x.requires_grad and _is_channels_last(x)):
        return x
    return _GradLikeInput.apply(x)


def global_average_pool(x: Tensor) -> Tensor:
    """``x.mean(dim=(2, 3))`` (``[B, C, H, W]`` → ``[B, C]``) whose gradient keeps ``x``'s memory format."""
    return grad_like_input(x).mean(dim=(2, 3))
