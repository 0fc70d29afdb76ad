"""The methods: one module each (its options, network, stages, loss and evaluation). See :mod:`.base`."""

from .base import Batch, Method, NoOptions, KDOptions
from .registry import ENTRY_POINT_GROUP, all_option_fields, method_class, method_names, methods, register

__all__ = ["ENTRY_POINT_GROUP", "Batch", "KDOptions", "Method", "NoOptions", "all_option_fields", "method_class",
           "method_names", "methods", "register"]
