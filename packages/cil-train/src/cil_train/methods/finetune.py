"""Fine-tuning with replay: plain cross-entropy over all seen classes on new data + memory (lower bound)."""

from __future__ import annotations

from .base import Method
from .registry import register


@register
class Finetune(Method):
    name = "finetune"
    plain_base = True  # phase 0: plain CE, default network and main stage
    summary = "plain cross-entropy on new data + replay memory (no distillation)"
    memory = "optional"
    position = 10
