"""Checked dataclass fields: declare a field once, with its default and what it allows.

    @dataclasses.dataclass(frozen=True)
    class OptimConfig(Section):
        section: ClassVar[str] = "optim"
        learning_rate: float = field(gt=0)                 # required, a number > 0
        schedule: str = field("constant", choices=SCHEDULES)

The annotation gives the type (int, float, bool, str, `X | None`, `tuple[int, ...]`, nested
sections), `field` the allowed values; `check_fields` checks and normalizes an instance (lists
become tuples, ints become floats where a float is declared) and `build` makes one from a mapping,
refusing unknown fields with the close match. Every message has one shape: the dotted field, the
value, and what is allowed. The config sections (`ml_practical.config`) and the model families
(`ml_practical.models`) are declared this way, so each default and each check is written once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np


class ConfigError(ValueError):
    """A config field is unknown, missing or has a value outside what it allows (one line)."""


# --------------------------------------------------------------------------- declaring fields


def field(default: Any = dataclasses.MISSING, *, choices: Sequence[Any] | None = None,
          ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its check: the annotation gives the type, these the allowed values.

    Args:
      default / default_factory: as in `dataclasses.field`; neither makes the field required.
      choices: the allowed values (strings).
      ge, gt, le, lt: bounds for numbers (>=, >, <=, <).
    """
    meta = {k: v for k, v in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt).items()
            if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{signs[k]} {meta[k]:g}" for k in ("ge", "gt", "le", "lt") if k in meta)


def _expected(hint: Any, meta: Mapping[str, Any]) -> str:
    """What a field allows, in words: 'one of [...]', 'an integer >= 1', 'a number > 0', ..."""
    if "choices" in meta:
        return f"one of {sorted(meta['choices'])}"
    optional, base = _unwrap_optional(hint)
    bounds = _bounds_text(meta)
    if base is bool:
        words = "True or False"
    elif base is int:
        words = "an integer" + (f" {bounds}" if bounds else "")
    elif base is float:
        words = "a number" + (f" {bounds}" if bounds else "")
    elif base is str:
        words = "a string"
    elif _tuple_item(base) is not None:
        words = f"a tuple of {_expected(_tuple_item(base), meta)}s"
    elif _is_union(base) and set(typing.get_args(base)) == {int, float}:
        words = "a number" + (f" {bounds}" if bounds else "")
    else:
        words = str(base)
    return words + (" or None" if optional else "")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _unwrap_optional(hint: Any) -> tuple[bool, Any]:
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return True, (args[0] if len(args) == 1 else typing.Union[tuple(args)])
    return False, hint


def _tuple_item(hint: Any) -> Any:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def coerce(value: Any, hint: Any, path: str, meta: Mapping[str, Any]) -> Any:
    """`value` as the annotation's type (list -> tuple, int -> float), or a ConfigError."""
    optional, base = _unwrap_optional(hint)

    def bad(reason: str = "") -> ConfigError:
        return ConfigError(f"{path}: {value!r}{reason}; expected {_expected(hint, meta)}")

    if value is None:
        if optional:
            return None
        raise bad()
    if base is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise bad()
        return bool(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad()
        value = int(value)
    elif base is float or (_is_union(base) and set(typing.get_args(base)) == {int, float}):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad(" is not a number")
        if base is float:
            value = float(value)
        if value != value:
            raise bad()
    elif base is str:
        if not isinstance(value, str):
            raise bad()
    elif _tuple_item(base) is not None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise bad()
        item = _tuple_item(base)
        return tuple(coerce(v, item, f"{path}[{i}]", meta) for i, v in enumerate(value))
    else:
        return value  # callables, unions the sections check themselves
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path}: unknown {value!r}; expected one of {sorted(meta['choices'])}")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        low_ok = ("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
        high_ok = ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"])
        if not (low_ok and high_ok and (math.isfinite(value) or not meta)):
            raise ConfigError(f"{path}: {value!r} out of range; expected {_expected(hint, meta)}")
    return value


# Dataclass fields of every flax module that are not config fields.
_FLAX_MODULE_FIELDS = ("parent", "name")


@functools.lru_cache(maxsize=None)
def _is_flax_module(cls: type) -> bool:
    return any(base.__module__.startswith("flax.") and base.__name__ == "Module"
               for base in cls.__mro__)


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The config fields of a section class (a flax module's `parent` / `name` left out)."""
    skip = _FLAX_MODULE_FIELDS if _is_flax_module(cls) else ()
    return [f for f in dataclasses.fields(cls) if f.init and f.name not in skip]


@functools.lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a section class (cached: modules are rebuilt often)."""
    return typing.get_type_hints(cls)


def check_fields(obj: Any, section: str) -> None:
    """Checks and normalizes every declared field of a dataclass instance in place.

    Called from `__post_init__` of every section (and of every model family), so a section built
    directly is checked as one parsed from a config. Frozen instances are updated with
    `object.__setattr__` (lists become tuples, ints become floats where a float is declared).

    Raises:
      ConfigError: naming `section.field`, the value and what is allowed.
    """
    declared = hints(type(obj))
    for f in config_fields(type(obj)):
        value = getattr(obj, f.name)
        where = f"{section}.{f.name}" if section else f.name  # a study's top-level field
        coerced = coerce(value, declared.get(f.name, Any), where, f.metadata)
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)


class Section:
    """Base of the frozen config sections: fields declared with `field`, checked on construction.

    Subclasses are `@dataclasses.dataclass(frozen=True)`, set `section` (the dotted prefix used in
    messages) and may override `check()` for rules between fields.
    """

    section: ClassVar[str] = ""

    def __post_init__(self):
        check_fields(self, self.section)
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise ConfigError naming the field."""


def suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def unknown_field(path: str, name: str, known: Sequence[str]) -> ConfigError:
    dotted = f"{path}.{name}" if path else name
    return ConfigError(f"{dotted}: unknown field; {suggest(name, known)}"
                       f"expected one of {sorted(known)}")


def as_mapping(raw: Any, path: str) -> dict[str, Any]:
    if hasattr(raw, "to_dict"):  # ml_collections.ConfigDict: resolves field references
        raw = raw.to_dict()
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return {f.name: getattr(raw, f.name) for f in config_fields(type(raw))}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a section of fields, got "
                          f"{type(raw).__name__}")
    return dict(raw)


def build(cls: type, raw: Any, path: str | None = None) -> Any:
    """An instance of section class `cls` from a mapping, recursing into nested sections.

    Args:
      cls: a dataclass whose fields are config fields (a `Section`, a model family, ...).
      raw: a ConfigDict, mapping or instance of `cls`.
      path: the dotted prefix for messages (default: `cls.section`).

    Raises:
      ConfigError: an unknown field (with the close match), a missing required field, or a bad
        value.
    """
    path = cls.section if path is None else path
    if isinstance(raw, cls):
        return raw
    values = as_mapping(raw, path)
    fields = config_fields(cls)
    names = [f.name for f in fields]
    for key in values:
        if key not in names:
            raise unknown_field(path, key, names)
    declared = hints(cls)
    kwargs = {}
    for f in fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: missing; it is required")
            continue
        value = values[f.name]
        hint = _unwrap_optional(declared.get(f.name, Any))[1]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and value is not None:
            value = build(hint, value, sub)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a check written as a plain ValueError
        raise ConfigError(str(e) if path in str(e) else f"{path}: {e}") from None


def section_dict(obj: Any) -> dict[str, Any]:
    """A section (or model module) as a plain dict of its config fields, nested sections too."""
    out = {}
    for f in config_fields(type(obj)):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = section_dict(value)
        out[f.name] = value
    return out
