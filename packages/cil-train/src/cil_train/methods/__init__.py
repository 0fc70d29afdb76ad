"""The methods, one recipe each. Importing this package registers all of them."""

from . import bsce_meta, dgr, finetune, icarl, il_baseline, lwf, ssil, wa  # noqa: F401  (registration)
from .base import METHODS, Batch, Recipe, make_recipe, method_names, register

# list them (in --help, errors and tables) from the simplest baseline to the newest method
_ORDER = ["finetune", "il-baseline", "bsce", "bsce-meta", "bsce-relaxed", "lwf", "icarl", "icarl-jioc", "wa", "ssil", "dgr"]
for _name in sorted(METHODS, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER)):
    METHODS[_name] = METHODS.pop(_name)

__all__ = ["METHODS", "Batch", "Recipe", "make_recipe", "method_names", "register"]
