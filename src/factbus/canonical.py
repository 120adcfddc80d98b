"""The canonical form of a fact and its Jinaga-compatible hash (DESIGN.md §1).

``canonical_bytes`` writes ``{"fields": ..., "predecessors": ...}`` exactly as
jinaga.js 6.11 writes it before hashing: object keys sorted by UTF-16 code
units and written as ``JSON.stringify(key)`` (so ``"``, ``\\`` and control
characters are escaped), ``null`` and the other scalars as JavaScript's
``JSON.stringify`` writes them, no whitespace. ``freeze`` validates a user
value and returns an immutable copy; values that cannot hash deterministically
are refused with :class:`~factbus.errors.InvalidFact`.

Two writers produce the same bytes: orjson (fast, in C) for the common case and
a Python writer for what orjson writes or orders differently from JavaScript
(floats, keys whose UTF-16 order differs from code-point order). orjson
escapes keys and strings exactly as ``JSON.stringify`` does (checked against
jinaga.js in tests/unit/test_fact_hash.py). ``freeze`` decides which one a
value needs during its single walk.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from factbus.errors import InvalidFact, NestingTooDeep

MAX_SAFE_INTEGER: Final = 2**53 - 1
DEFAULT_MAX_DEPTH: Final = 32

# Lone surrogates are refused; astral characters sort differently in UTF-16.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ASTRAL = re.compile(r"[\U00010000-\U0010ffff]")

FrozenValue = (
    Any  # str | bool | int | float | None | tuple[FrozenValue, ...] | Mapping[str, FrozenValue]
)


class Frozen:
    """Result of :func:`freeze`: an immutable copy and what its writer must handle."""

    __slots__ = ("needs_float_layout", "needs_python_writer", "value")

    def __init__(
        self, value: FrozenValue, needs_python_writer: bool, needs_float_layout: bool
    ) -> None:
        self.value = value
        self.needs_python_writer = needs_python_writer
        self.needs_float_layout = needs_float_layout


def freeze(value: Any, *, path: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Frozen:
    """Validate ``value`` and return an immutable deep copy.

    Lists become tuples and nested objects read-only mappings; a top-level
    object comes back as a new plain dict. ``path`` names the value in error
    messages (``fields.total``).

    :raises InvalidFact: NaN or Infinity, a lone surrogate, a non-string key,
        an integer outside JavaScript's safe range, an unsupported type, or
        nesting deeper than ``max_depth``.
    """
    flags = [False, False]  # [a key needs the Python writer, a float orjson writes otherwise]
    try:
        if type(value) is dict and max_depth > 0:
            # The common case, without the read-only view a nested object gets.
            return Frozen(_freeze_object(value, 0, max_depth, flags), flags[0], flags[1])
        frozen = _freeze(value, 0, max_depth, flags)
        if type(frozen) is MappingProxyType:
            # The top level stays a plain dict (orjson writes it without a
            # fallback call); the caller owns it and exposes a read-only view.
            frozen = frozen.copy()
    except _Refused as refused:
        where = path + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in reversed(refused.parts)
        )
        error = NestingTooDeep if refused.too_deep else InvalidFact
        raise error(where, refused.reason) from None
    return Frozen(frozen, flags[0], flags[1])


class _Refused(Exception):
    """Internal: carries the reason and the path (innermost first) up the walk."""

    def __init__(self, reason: str, *, too_deep: bool = False) -> None:
        self.reason = reason
        self.too_deep = too_deep
        self.parts: list[str | int] = []


def _freeze(value: Any, depth: int, max_depth: int, flags: list[bool]) -> FrozenValue:
    # Paths are built only on error (see freeze): this walk is on the hot path.
    kind = type(value)
    if kind is str:
        if not value.isascii() and _SURROGATE.search(value):
            raise _Refused("contains a lone surrogate, which has no UTF-8 form")
        return value
    if kind is bool or value is None:
        return value
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise _Refused(f"integer {value} is outside JavaScript's safe range ±(2^53-1)")
    if kind is float:
        if value != value or value in (math.inf, -math.inf):
            raise _Refused(f"{value} is not a finite number")
        if value.is_integer() or -1e-5 < value < 1e-5:
            # orjson writes other floats exactly as JavaScript does (checked on
            # hundreds of thousands of random floats); these it writes as 4247.0
            # or 4.8e-6 where JavaScript writes 4247 or 0.0000048.
            flags[1] = True
        return value
    if depth >= max_depth:
        raise _Refused(f"nesting is deeper than the limit of {max_depth}", too_deep=True)
    if isinstance(value, Mapping):
        return MappingProxyType(_freeze_object(value, depth, max_depth, flags))
    if isinstance(value, list | tuple):
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_freeze(item, depth + 1, max_depth, flags))
            except _Refused as refused:
                refused.parts.append(i)
                raise
        return tuple(items)
    if isinstance(value, bool | int | float | str):  # subclasses, e.g. IntEnum
        return _freeze(kind.__mro__[-2](value), depth, max_depth, flags)
    raise _Refused(f"values of type {kind.__name__} cannot be part of a fact")


def _freeze_object(
    value: Mapping[Any, Any], depth: int, max_depth: int, flags: list[bool]
) -> dict[str, FrozenValue]:
    """A frozen copy of an object's items as a new plain dict (``depth``: the object's)."""
    out: dict[str, FrozenValue] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise _Refused(f"object key {key!r} is not a string")
        if not key.isascii():
            _check_key(key, flags)
        item_kind = type(item)
        # Plain ASCII strings, safe ints and ordinary floats need no call: most fields are.
        if item_kind is str:
            if item.isascii():
                out[key] = item
                continue
        elif item_kind is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                out[key] = item
                continue
        elif item_kind is float:
            if item - item == 0.0:  # finite: NaN and ±Infinity give NaN
                if item.is_integer() or -1e-5 < item < 1e-5:
                    flags[1] = True  # see _freeze
                out[key] = item
                continue
        elif item is None or item_kind is bool:
            out[key] = item
            continue
        try:
            out[key] = _freeze(item, depth + 1, max_depth, flags)
        except _Refused as refused:
            refused.parts.append(key)
            raise
    return out


def _check_key(key: str, flags: list[bool]) -> None:
    if _SURROGATE.search(key):
        raise _Refused(f"key {key!r} contains a lone surrogate")
    if _ASTRAL.search(key):
        flags[0] = True


def check_role(role: str) -> None:
    """Refuse a predecessor role that cannot be a canonical key."""
    if type(role) is not str or not role:
        raise InvalidFact("predecessors", f"role {role!r} must be a non-empty string")
    if _SURROGATE.search(role):
        raise InvalidFact("predecessors", f"role {role!r} contains a lone surrogate")


def role_needs_python_writer(role: str) -> bool:
    """True when orjson would sort this key differently from jinaga.js (astral characters)."""
    return bool(not role.isascii() and _ASTRAL.search(role))


# -- writers ---------------------------------------------------------------


def _orjson_default(obj: Any) -> Any:
    if isinstance(obj, MappingProxyType):
        return dict(obj)
    raise TypeError


def canonical_bytes(
    fields: Mapping[str, Any],
    predecessors: Mapping[str, Any],
    needs_python_writer: bool,
    needs_float_layout: bool = True,
) -> bytes:
    """The exact bytes jinaga.js hashes: ``{"fields": ..., "predecessors": ...}``.

    ``fields`` is a frozen value; ``predecessors`` the wire form of the
    references. orjson writes everything but floats as JavaScript does; floats
    are handed to it pre-formatted (``orjson.Fragment``). Keys that need
    UTF-16 ordering take the Python writer.
    """
    if needs_python_writer:
        return _write({"fields": fields, "predecessors": predecessors}).encode("utf-8")
    if needs_float_layout:
        fields = _fragment_floats(fields)
    return orjson.dumps(
        {"fields": fields, "predecessors": predecessors},
        default=_orjson_default,
        option=orjson.OPT_SORT_KEYS,
    )


def _fragment_floats(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return orjson.Fragment(js_number(value).encode("ascii"))
    if kind is tuple or kind is list:
        return [_fragment_floats(item) for item in value]
    if kind is MappingProxyType or kind is dict:
        return {key: _fragment_floats(item) for key, item in value.items()}
    return value


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _write(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return orjson.dumps(value).decode("utf-8")
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if kind is int:
        return str(value)
    if kind is float:
        return js_number(value)
    if isinstance(value, tuple | list):
        return "[" + ",".join(_write(item) for item in value) + "]"
    keys = sorted(value, key=_utf16_key)
    # JSON.stringify(key): orjson escapes exactly as JavaScript does.
    return "{" + ",".join(f"{_write(key)}:{_write(value[key])}" for key in keys) + "}"


def js_number(value: float) -> str:
    """Format a finite float exactly as JavaScript's ``Number.prototype.toString``.

    Python's ``repr`` yields the same shortest round-tripping digits as
    ECMAScript's Number::toString; only the layout (exponent thresholds,
    ``e+``) differs, and that is what this rebuilds.
    """
    if value == 0:
        return "0"  # also -0.0, as JSON.stringify writes it
    text = repr(value)
    if "e" not in text:
        # Python leaves the exponent out only for 1e-4 <= |x| < 1e16, where
        # JavaScript does too; it differs only by a trailing ".0".
        return text[:-2] if text.endswith(".0") else text
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, frac = mantissa.partition(".")
    if frac == "0":
        frac = ""
    digits = (whole + frac).lstrip("0")
    # n: position of the decimal point relative to the digit string (ECMA-262 Number::toString)
    n = len(whole) + exponent if whole != "0" else exponent - (len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = f"e+{e}" if e >= 0 else f"e-{-e}"
        out = digits + exp if k == 1 else digits[0] + "." + digits[1:] + exp
    return sign + out


def digest(canonical: bytes) -> str:
    """SHA-512 of the canonical bytes, standard base64 with padding (88 characters)."""
    return base64.b64encode(hashlib.sha512(canonical).digest()).decode("ascii")
