"""The methods, one recipe each. Importing this package registers all of them."""

from . import bsce_meta, dgr, finetune, icarl, il_baseline, lwf, ssil, wa  # noqa: F401  (registration)
from .base import METHODS, Batch, Recipe, make_recipe, method_names, register

__all__ = ["METHODS", "Batch", "Recipe", "make_recipe", "method_names", "register"]
