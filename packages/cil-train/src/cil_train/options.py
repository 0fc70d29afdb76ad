"""Option fields with validators: the one way every option of cil-train is declared.

:class:`~cil_train.config.RunConfig` (the options every method shares) and each method's own options
class (``Method.Options``) are attrs classes built from :func:`option`. Each field carries its help
text, its group and its allowed values in ``metadata``; the command line, ``--help``, presets and
``config.json`` are generated from these fields, so they cannot drift apart. A wrong value fails at
construction with a :class:`~cil_train.errors.ConfigError` that names the option (its command-line
spelling), the value and what is allowed.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from .errors import ConfigError

__all__ = ["boolean", "choice", "int_list", "number", "option", "option_name", "optional_str",
           "reject_ignored_options", "text"]


def option_name(field_name: str) -> str:
    """The command-line spelling of a field: ``memory_per_class`` → ``--memory-per-class``."""
    return "--" + field_name.replace("_", "-")


def reject_ignored_options(method: str, options: Any, ignored: dict[str, str]) -> None:
    """A ``ConfigError`` for the first field of ``ignored`` (``{field: why it has no effect}``) that ``options``
    sets away from its default: an option the method does not read with the others as given would otherwise
    change nothing in silence (``--podnet-nca paper`` on ``podnet-bsce-relaxed``, whose classification term is
    not PODNet's NCA; ``--wa-p 1`` with ``--no-wa-align``)."""
    defaults = {f.name: f.default for f in attrs.fields(type(options))}
    for name, why in ignored.items():
        if getattr(options, name) != defaults[name]:
            raise ConfigError(f"{option_name(name)} has no effect with --method {method}: {why}.")


def _fail(attribute: attrs.Attribute, value: Any, allowed: str) -> None:
    raise ConfigError(f"{option_name(attribute.name)} {value!r} is not allowed: {allowed}.")


def choice(*allowed: str) -> Callable:
    """Validator: one of ``allowed`` (listed in ``--help``)."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in allowed:
            _fail(attribute, value, "choose one of " + ", ".join(allowed))

    check.choices = allowed  # type: ignore[attr-defined]
    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, optional: bool = False,
           integer: bool = False) -> Callable:
    """Validator: a number (an integer with ``integer=True``) in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``);
    ``None`` passes when ``optional``."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            _fail(attribute, value, f"it must be {kind}")
        if value != value:  # NaN
            _fail(attribute, value, f"it must be {kind}")
        low = f"{'>' if lo_open else '≥'} {lo}"
        if lo is not None and (value <= lo if lo_open else value < lo):
            _fail(attribute, value, f"it must be {low}" + (f" and ≤ {hi}" if hi is not None else ""))
        if hi is not None and value > hi:
            _fail(attribute, value, f"it must be ≤ {hi}" + (f" and {low}" if lo is not None else ""))

    check.kind = "int" if integer else "float"  # type: ignore[attr-defined]
    return check


def int_list(optional: bool = True) -> Callable:
    """Validator: a tuple of integers (the command line takes ``80,120``)."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            _fail(attribute, value, "give comma-separated integers, e.g. 80,120")

    check.kind = "int_list"  # type: ignore[attr-defined]
    return check


def boolean(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: ``True`` or ``False`` (``--name`` / ``--no-name`` on the command line)."""
    if not isinstance(value, bool):
        _fail(attribute, value, "it must be true or false")


boolean.kind = "bool"  # type: ignore[attr-defined]


def optional_str(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: a string or ``None``."""
    if value is not None and not isinstance(value, str):
        _fail(attribute, value, "it must be a string")


def text(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: a non-empty string."""
    if not isinstance(value, str) or not value:
        _fail(attribute, value, "it must be a non-empty string")


def _tuple_or_none(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def option(help: str, validator: Callable | None = None, default: Any = None, *, group: str = "method",
           **metadata: Any) -> Any:
    """An attrs field of an options class: ``default``, ``validator`` and the ``help`` shown by ``--help``.

    Lists are stored as tuples (so configurations stay hashable and compare equal after a JSON round trip).
    """
    meta = {"group": group, "help": help, **metadata}
    if validator is not None:
        if hasattr(validator, "choices"):
            meta.setdefault("choices", validator.choices)
        if hasattr(validator, "kind"):
            meta.setdefault("kind", validator.kind)
    converter = _tuple_or_none if meta.get("kind") == "int_list" or "choices_or_list" in meta else None
    if "flag_value" in meta:  # ``--name`` alone means ``--name FLAG_VALUE``; a bool of older configs maps too
        converter = _flag_converter(meta["flag_value"], meta.get("false_value"))
    return attrs.field(default=default, validator=validator, converter=converter, metadata=meta)


def _flag_converter(on: str, off: str | None) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is True:
            return on
        if value is False and off is not None:
            return off
        return value

    return convert
