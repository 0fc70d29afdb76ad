"""Importing this module registers the methods that ship with cil-train."""

from . import bic, bsce_meta, dgr, finetune, icarl, il_baseline, lwf, ssil, wa  # noqa: F401
