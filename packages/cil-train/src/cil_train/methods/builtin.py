"""Importing this module registers the methods that ship with cil-train."""

from . import bic, bsce_meta, dgr, finetune, icarl, il_baseline, lucir, lwf, podnet, ssil, wa  # noqa: F401
