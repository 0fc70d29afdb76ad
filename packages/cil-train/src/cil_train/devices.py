"""The device and the autocast dtype of a run (``--device``, ``--amp``)."""

from __future__ import annotations

import torch

from .distributed import DistInfo
from .errors import ConfigError

__all__ = ["cpu_has_amx", "resolve_amp", "resolve_device"]


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
        if info.enabled and name == "cuda":
            name = f"cuda:{info.local_rank}"
    elif name != "cpu":
        raise ConfigError(f"--device {name!r} is not allowed: use auto, cpu, cuda or cuda:N.")
    return torch.device(name)


def _cpu_supports(probe: str) -> bool:
    """``torch.cpu.<probe>()``, False where torch lacks the probe or it fails."""
    fn = getattr(torch.cpu, probe, None)
    if fn is None:
        return False
    try:
        return bool(fn())
    except Exception:  # pragma: no cover - probe failure means "no"
        return False


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units; Intel Sapphire Rapids and later)."""
    return _cpu_supports("_is_amx_tile_supported")


def _cpu_has_fast_bf16() -> bool:
    return cpu_has_amx() or _cpu_supports("_is_avx512_bf16_supported")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. ``auto`` = bf16 on GPUs that support it and on CPUs with
    AMX / AVX-512-bf16 (where it is ~1.7× faster), float32 elsewhere."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off.")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else None
