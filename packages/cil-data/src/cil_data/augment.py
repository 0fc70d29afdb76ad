"""Batch augmentation on the device: random crop with zero padding, horizontal flip, normalisation.

The whole batch is transformed with one gather (no per-image Python loop, no PIL): for image ``b`` with
crop offset ``(dy_b, dx_b) ∈ [0, 2p]²`` and flip bit ``f_b``, output pixel ``(y, x)`` reads the zero-padded
input at row ``dy_b + y`` and column ``dx_b + (W − 1 − x if f_b else x)``. This matches torchvision's
``RandomCrop(size, padding=p)`` followed by ``RandomHorizontalFlip()``, then
``Normalize(mean, std)`` on the 0..1 scale: ``(x/255 − mean) / std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._checks import check_int
from .errors import DataError

__all__ = ["AUGMENT_POLICIES", "BatchAugment", "check_augment_policy"]

AUGMENT_POLICIES = ("crop,flip", "crop", "none")
"""What a data source asks for: random crop (4-pixel padding) and horizontal flip, crop only (characters and
other data whose mirror image is another class: b/d, p/q, ( / )), or nothing."""


def check_augment_policy(policy: str, what: str = "augment") -> str:
    """``policy`` if it is one of :data:`AUGMENT_POLICIES`, else a :class:`DataError` naming ``what``."""
    if policy not in AUGMENT_POLICIES:
        raise DataError(f"{what} must be one of {', '.join(AUGMENT_POLICIES)}, got {policy!r}")
    return policy


class BatchAugment:
    """Seeded whole-batch augmentation of uint8 images ``[B, C, H, W]`` on their own device.

    Args:
        mean, std: per-channel statistics on the 0..1 scale (e.g. ``dataset.mean``, ``dataset.std``).
        crop_padding: ``p`` of the random crop (0 disables the crop).
        flip: random horizontal flip with probability 1/2.
        seed: seeds the internal generator used when a call passes no generator.
        channels_last: return the output in ``torch.channels_last`` memory format.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 4,
        flip: bool = True,
        *,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if not self.mean or len(self.mean) != len(self.std):
            raise DataError(f"mean and std need one value per channel each, got {self.mean} and {self.std}")
        if any(not s > 0 for s in self.std):
            raise DataError(f"std must be > 0 for every channel, got {self.std}")
        self.crop_padding = check_int(crop_padding, "crop_padding", 0)
        self.flip = bool(flip)
        self.channels_last = bool(channels_last)
        self.generator = torch.Generator().manual_seed(check_int(seed, "seed", 0))
        self._affine: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_policy(cls, policy: str, mean: Sequence[float], std: Sequence[float], **kwargs: Any) -> "BatchAugment":
        """The augmentation of a policy of :data:`AUGMENT_POLICIES` (crop padding 4 where it crops).

        The random draws do not depend on the policy: with ``"crop"`` the flip bits are drawn and ignored, so
        the crops are the same as with ``"crop,flip"`` for the same generator."""
        check_augment_policy(policy)
        return cls(mean, std, crop_padding=0 if policy == "none" else 4, flip=policy == "crop,flip", **kwargs)

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"BatchAugment needs uint8 images [B, C, H, W], got {got}")
        if images.shape[1] != len(self.mean):
            raise DataError(f"images have {images.shape[1]} channels but mean/std have {len(self.mean)} values")

    def _scale_shift(self, device: torch.device, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, c)
        if key not in self._affine:
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
            self._affine[key] = (1.0 / (255.0 * std), -mean / std)
        return self._affine[key]

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """``(x/255 − mean)/std`` as float32 on the same device (evaluation: no augmentation)."""
        self._check(images_uint8)
        scale, shift = self._scale_shift(images_uint8.device, images_uint8.shape[1])
        out = torch.addcmul(shift, images_uint8.float(), scale)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def __call__(self, images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random crop (zero padding) + random flip + normalisation of the whole batch, float32, same device.

        ``generator`` (any device; draws are moved to the images' device) defaults to the internal one.
        """
        self._check(images_uint8)
        gen = self.generator if generator is None else generator
        b, c, h, w = images_uint8.shape
        device = images_uint8.device
        p = self.crop_padding
        if b == 0 or (p == 0 and not self.flip):
            return self.normalize(images_uint8)
        draws = torch.randint(0, 2 * p + 1, (2, b), generator=gen, device=gen.device).to(device)
        flips = torch.randint(0, 2, (b,), generator=gen, device=gen.device).to(device).bool()
        if not self.flip:
            flips = torch.zeros_like(flips)
        padded = torch.nn.functional.pad(images_uint8, (p, p, p, p)) if p else images_uint8
        ys = torch.arange(h, device=device)
        xs = torch.arange(w, device=device)
        rows = draws[0][:, None] + ys[None, :]  # [B, H]
        cols = draws[1][:, None] + torch.where(flips[:, None], (w - 1 - xs)[None, :], xs[None, :])  # [B, W]
        wp = w + 2 * p
        flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        out = torch.gather(padded.reshape(b, c, -1), 2, flat).view(b, c, h, w)
        return self.normalize(out)

    def state_dict(self) -> dict[str, Any]:
        """The internal generator's state (for exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
