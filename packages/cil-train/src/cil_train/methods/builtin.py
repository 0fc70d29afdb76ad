"""Importing this module registers the methods that ship with cil-train."""

from . import bic, bsce_meta, der, dgr, finetune, foster, icarl, il_baseline, lucir, lwf, podnet, ssil, wa  # noqa: F401
