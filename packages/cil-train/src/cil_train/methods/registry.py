"""The method registry: ``@register`` in this package, the ``cil_train.methods`` entry-point group outside it.

A third-party package adds a method without touching cil-train by declaring, in its ``pyproject.toml``::

    [project.entry-points."cil_train.methods"]
    my-method = "my_package.my_module:MyMethod"

The entry point is loaded the first time the registry is read; ``--help`` then lists the method and
``--method my-method`` runs it. Methods are listed by their ``position`` (then by name).
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Iterator

import attrs

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .base import Method

__all__ = ["ENTRY_POINT_GROUP", "all_option_fields", "method_class", "method_names", "methods", "register"]

ENTRY_POINT_GROUP = "cil_train.methods"
_REGISTERED: dict[str, type["Method"]] = {}
_entry_points_loaded = False


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__}.name is empty: a method needs the name used by --method")
    other = _REGISTERED.get(cls.name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"two methods are called {cls.name!r}: {other.__module__}.{other.__qualname__} and "
                        f"{cls.__module__}.{cls.__qualname__}")
    _REGISTERED[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTERED:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-in methods down with it
            raise ConfigError(f"the method plug-in {ep.name!r} ({ep.value}) of entry-point group {ENTRY_POINT_GROUP} "
                              f"cannot be loaded: {type(exc).__name__}: {exc}") from exc
        if getattr(cls, "name", None) != ep.name:
            raise ConfigError(f"the method plug-in {ep.value} is registered as {ep.name!r} but its name is "
                              f"{getattr(cls, 'name', None)!r}; they must agree")
        register(cls)


def methods() -> dict[str, type["Method"]]:
    """Every method by name, in list order (built-in and plug-ins)."""
    from . import builtin  # noqa: F401  (registers the built-in methods)

    _load_entry_points()
    ordered = sorted(_REGISTERED.values(), key=lambda c: (c.position, c.name))
    return {c.name: c for c in ordered}


def method_names() -> list[str]:
    return list(methods())


def method_class(name: str) -> type["Method"]:
    """The method called ``name``; the one place an unknown ``--method`` is reported."""
    known = methods()
    if name not in known:
        raise ConfigError(f"--method {name!r} is not a known method: choose one of {', '.join(known)}.")
    return known[name]


def all_option_fields() -> dict[str, list[tuple[type["Method"], attrs.Attribute]]]:
    """Each method option's field name → the methods that have it, with its attrs field."""
    out: dict[str, list] = {}
    for cls in methods().values():
        for f in attrs.fields(cls.Options):
            out.setdefault(f.name, []).append((cls, f))
    return out


def iter_options(cls: type["Method"]) -> Iterator[attrs.Attribute]:
    return iter(attrs.fields(cls.Options))
