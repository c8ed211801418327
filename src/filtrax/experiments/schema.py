"""The config schema's machinery: validated frozen-dataclass sections, TOML in and out.

Every field carries its constraints in ``dataclasses.field(metadata=...)`` (see
:func:`field`):

    help            one line for the CLI help
    min, max        inclusive bounds (``min_exclusive`` / ``max_exclusive`` make them strict)
    choices         the allowed values
    check           a callable that raises ``ValueError(reason)`` for an invalid value

One generic validator (:class:`Validated`) walks the fields with
:func:`typing.get_type_hints`, so a section built by hand or by ``dataclasses.replace`` is
validated exactly like one read from a file. Cross-field checks live in each section's
``_check``. The experiment config (:mod:`.config`) and the training configs
(:mod:`filtrax.training.config`) are both built on it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from datetime import date, time
from typing import Any, ClassVar

from .errors import ConfigError

__all__ = [
    "NON_NEGATIVE",
    "POSITIVE",
    "Validated",
    "apply_overrides",
    "build_section",
    "display",
    "field",
    "show",
    "to_dict",
    "toml_value",
]


POSITIVE: dict[str, Any] = {"min": 0.0, "min_exclusive": True}
NON_NEGATIVE: dict[str, Any] = {"min": 0.0}


def field(default: Any, help: str, **constraints: Any) -> Any:
    """A dataclass field with a default, a help line and validation metadata."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"help": help, **constraints})


def show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def display(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


_EXPECTED = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_EXPECTED_ITEMS = {int: "integers", float: "numbers", str: "strings"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple), or a ConfigError."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"{key}: expected a list of {_EXPECTED_ITEMS[item]}, got {show(value)}"
            )
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {show(value)}")
    if type(value) is not hint:  # exact: bool is not accepted as int
        raise ConfigError(f"{key}: expected {_EXPECTED[hint]}, got {show(value)}")
    return value


def _bounds(meta: Mapping[str, Any]) -> str:
    parts = []
    if "min" in meta:
        parts.append(f"{'>' if meta.get('min_exclusive') else '>='} {meta['min']!r}")
    if "max" in meta:
        parts.append(f"{'<' if meta.get('max_exclusive') else '<='} {meta['max']!r}")
    return " and ".join(parts)


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in sorted(meta["choices"]))
        raise ConfigError(f"{key} = {value!r} is not one of: {allowed}")
    low, high = meta.get("min"), meta.get("max")
    too_low = low is not None and (value <= low if meta.get("min_exclusive") else value < low)
    too_high = high is not None and (value >= high if meta.get("max_exclusive") else value > high)
    if too_low or too_high:
        raise ConfigError(f"{key} = {value!r} is out of range: must be {_bounds(meta)}")
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as error:
            raise ConfigError(f"{key} = {value!r} is invalid: {error}") from None


class Validated:
    """Mixin: validate every field on construction, then run the cross-field ``_check``."""

    SECTION: ClassVar[str] = ""
    # Declared so that type checkers see every section as the dataclass it is.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key, hint, value = self._key(f.name), hints[f.name], getattr(self, f.name)
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                if not isinstance(value, hint):
                    raise ConfigError(f"{key}: expected a table, got {show(value)}")
                continue
            value = _coerce(key, value, hint)
            for item in value if isinstance(value, tuple) else (value,):
                _check_value(key, item, f.metadata)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Cross-field checks; overridden by sections that have them."""

    def set_outside(self, in_effect: tuple[str, ...]) -> dict[str, Any]:
        """The fields not named in ``in_effect`` whose value is not their default, in
        schema order: the keys a section's model family or method would not read."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in in_effect and getattr(self, f.name) != f.default
        }


def to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


# --------------------------------------------------------------------------------------------
# TOML output
# --------------------------------------------------------------------------------------------

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(s: str) -> str:
    def escape(c: str) -> str:
        if c in _ESCAPES:
            return _ESCAPES[c]
        return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c

    return '"' + "".join(escape(c) for c in s) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # finite floats only (validated); repr round-trips exactly
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {show(value)} as TOML")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _unknown(kind: str, key: str, name: str, valid: Sequence[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return ConfigError(f"unknown {kind} {key!r}; did you mean {prefix + close[0]!r}?")
    return ConfigError(f"unknown {kind} {key!r}; valid keys: {', '.join(sorted(valid))}")


def build_section(cls: type[Validated], data: dict[str, Any], prefix: str = "") -> Any:
    """Check ``data`` for unknown keys, recurse into tables, construct (which validates)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        if name not in names:
            kind = "section" if not prefix and isinstance(value, dict) else "key"
            raise _unknown(kind, key, name, names, prefix)
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table, got {show(value)}")
            value = build_section(hints[name], value, f"{key}.")
        kwargs[name] = value
    return cls(**kwargs)


def _parse_override_value(text: str) -> Any:
    try:
        value = tomllib.loads("v = " + text)["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()
    # No field holds a TOML date/time: keep ``run.start_time=2000-01-01T00:00:00`` a string.
    return text.strip() if isinstance(value, date | time) else value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``"section.key=value"`` overrides set (not yet validated).

    The value is parsed as a TOML value, falling back to the bare string when that fails, so
    ``filter.particles=128`` gives an int and ``filter.method=bootstrap`` a string.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) > 2 or not all(parts):
            raise ConfigError(
                f"malformed override {item!r}: expected 'section.key=value' (or 'key=value')"
            )
        value = _parse_override_value(text)
        if len(parts) == 1:
            data[parts[0]] = value
            continue
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a table, got {show(section)}")
        section[parts[1]] = value
    return data
