"""The envelope codec: facts <-> one broker message body (DESIGN.md §2).

Wire format, version 1 (orjson, compact)::

    {"v": 1, "facts": [{"type": ..., "hash": ..., "fields": {...},
                        "predecessors": {role: {"hash": ..., "type": ...} | [...]}}, ...]}

Facts are in topological order (predecessors first); the last fact is the
*head*, whose hash is the broker message id. Receivers recompute every hash.
Metadata that is not part of identity travels in broker headers.

Three paths verify a body, each falling back to the next on any doubt: the
native helper (the optional ``factbus_native`` extension, built from
``native/`` by ``make``; :data:`NATIVE` says whether it is in use,
``FACTBUS_NATIVE=0`` turns it off), the plain Python path
(:func:`_decode_plain`) and the full path (:func:`_decode_full`), which alone
refuses a body and names its problem. The first two accept only what the full
path accepts, with the same hash.
"""

from __future__ import annotations

import binascii
import hashlib
import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import orjson

from factbus.canonical import DEFAULT_MAX_DEPTH
from factbus.errors import (
    EnvelopeError,
    HashMismatch,
    InvalidFact,
    InvalidValue,
    MalformedEnvelope,
    NestingTooDeep,
    OversizedEnvelope,
    PredecessorCycle,
    TooDeep,
    UnknownVersion,
)
from factbus.fact import (
    _NO_PREDECESSORS,
    _TYPES,
    Fact,
    FactRef,
    _ref_sort_key,
    new_ref,
    received_fact,
)

if TYPE_CHECKING:
    from factbus.config import Settings

_ENVELOPE_KEYS: Final = frozenset(("v", "facts"))
_WIRE_KEYS: Final = frozenset(("type", "hash", "fields", "predecessors"))
_SORT_STRICT: Final = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
# A number orjson writes otherwise than JavaScript: integral (``37.0``, ``1e+16``)
# or tiny (``4.8e-6``). Searched in orjson's canonical output; a match inside a
# string only sends the fact down the full path (never the reverse).
_JS_FLOAT_LAYOUT: Final = re.compile(rb"[:,\[]-?[0-9]+(?:\.0[,\]}]|(?:\.[0-9]+)?e)")
# A UTF-8 lead byte of a character outside the BMP (UTF-16 key order differs).
_ASTRAL_UTF8: Final = re.compile(rb"[\xf0-\xf4]")

VERSION: Final = 1
_EMPTY: Final[dict[str, Any]] = {}
DEFAULT_MAX_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """What a receiver accepts; larger or deeper envelopes are rejected."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH

    @classmethod
    def of(cls, settings: Settings) -> CodecLimits:
        """The limits a bus with these settings decodes with (``max_envelope_bytes``,
        ``max_depth``): a tool reading that bus's envelopes elsewhere uses the same."""
        return cls(settings.max_envelope_bytes, settings.max_depth)


class _Native(Protocol):
    """The ``factbus_native`` extension (native/src/lib.rs; stub: native/factbus_native.pyi)."""

    def setup(
        self,
        fact_cls: type,
        ref_cls: type,
        types: dict[str, str],
        no_predecessors: dict[str, Any],
    ) -> None: ...

    def decode_bodies(
        self, bodies: Iterable[bytes], max_bytes: int, max_depth: int
    ) -> tuple[list[list[Fact] | None], list[int]]: ...

    def decode(self, body: bytes, max_bytes: int, max_depth: int) -> list[Fact] | None: ...

    def canonical_forms(self, body: bytes, max_depth: int) -> list[tuple[bytes, str]] | None: ...


def _load_native() -> tuple[_Native | None, str]:
    """The native helper, set up with this module's classes, and ``""``; or
    ``None`` and why not: not installed, turned off (``FACTBUS_NATIVE=0``),
    or built for another factbus (also logged as a warning)."""
    if os.environ.get("FACTBUS_NATIVE", "1").strip() == "0":
        return None, "turned off (FACTBUS_NATIVE=0)"
    try:
        module = cast(_Native, importlib.import_module("factbus_native"))
    except ImportError as error:
        return None, f"not installed (make native): {error}"
    try:
        module.setup(Fact, FactRef, _TYPES, _NO_PREDECESSORS)
    except (AttributeError, TypeError, KeyError) as error:
        logging.getLogger("factbus.envelope").warning(
            "factbus_native does not fit this factbus (%s); using the Python receive path", error
        )
        return None, f"does not fit this factbus: {error}"
    return module, ""


_native, _native_reason = _load_native()
NATIVE: Final[bool] = _native is not None
"""Whether the native helper verifies received envelopes (else pure Python)."""
NATIVE_REASON: Final[str] = _native_reason
"""Why the native helper is not in use (``""`` when :data:`NATIVE`)."""


def topological(facts: Iterable[Fact]) -> list[Fact]:
    """The facts, each once, predecessors before successors (stable otherwise).

    Only order among the given facts is arranged; predecessors that are not
    given are ignored.
    """
    unique: dict[FactRef, Fact] = {}
    for fact in facts:
        unique.setdefault(fact.ref, fact)
    ordered: list[Fact] = []
    placed: set[FactRef] = set()

    def visit(fact: Fact) -> None:
        # Iterative DFS: deep chains must not hit Python's recursion limit.
        stack: list[tuple[Fact, Iterable[FactRef]]] = [(fact, iter(list(fact.predecessor_refs())))]
        placed.add(fact.ref)
        while stack:
            current, pending = stack[-1]
            for ref in pending:
                pred = unique.get(ref)
                if pred is not None and ref not in placed:
                    placed.add(ref)
                    stack.append((pred, iter(list(pred.predecessor_refs()))))
                    break
            else:
                stack.pop()
                ordered.append(current)

    for fact in unique.values():
        if fact.ref not in placed:
            visit(fact)
    return ordered


_OPEN: Final = b'{"v":1,"facts":['
_CLOSE: Final = b"]}"


def encode(facts: Sequence[Fact]) -> bytes:
    """One envelope body carrying ``facts``, which must already be topologically ordered."""
    # Version 1, written by hand around each fact's cached wire bytes.
    if len(facts) == 1:
        return _OPEN + facts[0].wire_bytes() + _CLOSE
    return _OPEN + b",".join([fact.wire_bytes() for fact in facts]) + _CLOSE


def encode_one(fact: Fact) -> bytes:
    """``encode([fact])``: the envelope of one fact, without a list (a publish of
    many lone facts makes one of these each)."""
    return _OPEN + fact.wire_bytes() + _CLOSE


def decode(body: bytes, limits: CodecLimits = CodecLimits()) -> list[Fact]:
    """Parse and verify an envelope; return its facts in topological order.

    :raises OversizedEnvelope, MalformedEnvelope, UnknownVersion, TooDeep,
        InvalidValue, PredecessorCycle, HashMismatch: with a precise message.
    """
    if _native is not None:
        facts = _native.decode(body, limits.max_bytes, limits.max_depth)
        if facts is not None:
            return facts
    facts = _decode_plain(body, limits.max_bytes, limits.max_depth)
    return facts if facts is not None else _decode_full(body, limits)


def decode_each(
    bodies: Iterable[bytes], limits: CodecLimits = CodecLimits()
) -> tuple[list[list[Fact]], dict[int, EnvelopeError]]:
    """:func:`decode` of each body (a pipeline step's): each body's facts (``[]``
    for one refused), and the error :func:`decode` raises for each refused body,
    by its position.

    With the native helper, each body's list is out of the cyclic garbage
    collector's lists (it holds only facts, which hold no cycles; PROFILE.md
    §26): read it or copy it, but do not make it part of a reference cycle (a
    list holding itself, an object it holds that refers back to it), which would
    never be freed."""
    plain, max_bytes, max_depth = _decode_plain, limits.max_bytes, limits.max_depth
    errors: dict[int, EnvelopeError] = {}
    if _native is not None:
        bodies = bodies if type(bodies) is list else list(bodies)
        decoded, doubts = _native.decode_bodies(bodies, max_bytes, max_depth)
        for i in doubts:  # the Python paths decide these
            facts = plain(bodies[i], max_bytes, max_depth)
            if facts is None:
                try:
                    facts = _decode_full(bodies[i], limits)
                except EnvelopeError as error:
                    errors[i] = error
                    facts = []
            decoded[i] = facts
        return cast(list[list[Fact]], decoded), errors
    out: list[list[Fact]] = []
    add = out.append
    for body in bodies:
        facts = plain(body, max_bytes, max_depth)
        if facts is None:
            try:
                facts = _decode_full(body, limits)
            except EnvelopeError as error:
                errors[len(out)] = error
                facts = []
        add(facts)
    return out, errors


def _decode_full(body: bytes, limits: CodecLimits) -> list[Fact]:
    """:func:`decode` with every check spelled out and every refusal named."""
    if len(body) > limits.max_bytes:
        raise OversizedEnvelope(f"{len(body)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc):
            raise TooDeep(f"JSON nesting exceeds the parser's limit: {exc}") from None
        raise MalformedEnvelope(f"not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise MalformedEnvelope(f"top level must be an object, not {type(doc).__name__}")
    if orjson.dumps(doc) != body:
        # Not byte-for-byte what orjson (so factbus) writes: the only case where
        # JSON may hide a duplicate key, which orjson resolves silently.
        _refuse_duplicate_keys(body)
    version = doc.get("v")
    if version != VERSION or type(version) is not int:
        raise UnknownVersion(f"version {version!r} is not supported (this node reads {VERSION})")
    wire_facts = doc.get("facts")
    if type(wire_facts) is not list or not wire_facts:
        raise MalformedEnvelope('"facts" must be a non-empty list')
    return _decode_checked(wire_facts, limits.max_depth)


def _decode_checked(wire_facts: list[Any], max_depth: int) -> list[Fact]:
    """The full path of :func:`decode`: every value walked and frozen, every
    refusal named."""
    claims = [_claim(i, wire) for i, wire in enumerate(wire_facts)]
    if len(claims) > 1 or claims[0][2]:  # one fact without predecessors: nothing to order
        _check_order(claims)
    facts: list[Fact] = []
    for i, (wire, claimed, preds) in enumerate(claims):
        try:
            fact = Fact._from_wire(
                claimed.type,
                wire.get("fields"),
                preds,
                wire.get("predecessors", _EMPTY),
                max_depth,
            )
        except NestingTooDeep as exc:
            raise TooDeep(f"facts[{i}] ({claimed.type}): {exc}") from None
        except InvalidFact as exc:
            raise InvalidValue(f"facts[{i}] ({claimed.type}): {exc}") from None
        if fact.hash != claimed.hash:
            raise HashMismatch(
                f"facts[{i}] ({claimed.type}) claims hash {claimed.hash[:16]}... "
                f"but its content hashes to {fact.hash[:16]}..."
            )
        facts.append(fact)
    return facts


def _decode_plain(body: bytes, max_bytes: int, max_depth: int) -> list[Fact] | None:
    """The facts of a well-formed envelope whose values orjson judges alone, or
    ``None``: then :func:`decode` takes its full path (:func:`_decode_full`,
    which also names what is wrong with a malformed envelope).

    What is checked here, with one ``orjson.dumps`` of the canonical form per
    fact and no walk of nested values: the envelope (within ``max_bytes``,
    exactly ``v`` (1) and a non-empty ``facts``; no duplicate key: as many
    ``:`` in the body as keys parsed, or the body is byte for byte orjson's own
    writing); each fact's structure (exactly ``type``, ``hash``, ``fields``,
    ``predecessors``, each of its type; references of exactly a type and an
    88-character hash, lists in hash order; topological order); the value
    rules: ``orjson.loads`` already refused NaN, Infinity, lone surrogates and
    invalid UTF-8, ``OPT_STRICT_INTEGER`` refuses integers beyond ±(2^53-1),
    the fields' own floats are ones orjson writes as JavaScript does (not
    integral, not below 1e-5), and when the fields nest lists or objects, a
    scan of the canonical bytes finds no number laid out otherwise (``37.0``,
    ``1e+16``, ``4.8e-6``) and fewer brackets than ``max_depth`` (so nothing
    nests that deep); no character beyond the BMP (keys would need UTF-16
    order); the hash, recomputed from those bytes. Anything else, or any doubt
    (a scan may match inside a string), returns ``None``. The fields stay the
    parsed dict, owned by the fact, which freezes nested values when they are
    first read (:attr:`Fact.fields`).
    """
    if len(body) > max_bytes or max_depth < 1:  # below 1 even the fields object is too deep
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or doc.keys() != _ENVELOPE_KEYS:
        return None
    version = doc["v"]
    wire_facts = doc["facts"]
    if version != VERSION or type(version) is not int or type(wire_facts) is not list:
        return None
    dumps, sha512, b64 = orjson.dumps, hashlib.sha512, binascii.b2a_base64
    layout, astral = _JS_FLOAT_LAYOUT.search, _ASTRAL_UTF8.search
    make = received_fact
    keys = 2  # v, facts; then each object's keys (not counted once values nest)
    counted = True
    facts: list[Fact] = []
    preds: dict[str, FactRef | tuple[FactRef, ...]] | None = None
    for wire in wire_facts:
        if type(wire) is not dict or wire.keys() != _WIRE_KEYS:
            return None
        fact_type = wire["type"]
        fact_hash = wire["hash"]
        fields = wire["fields"]
        wire_preds = wire["predecessors"]
        # The claimed hash is checked by comparing it with the recomputed one (below).
        if (
            type(fact_type) is not str
            or not fact_type
            or type(fields) is not dict
            or type(wire_preds) is not dict
        ):
            return None
        if wire_preds:
            plain = _plain_predecessors(wire_preds)
            if plain is None:
                return None
            preds, structure, pred_keys = plain
            keys += 4 + len(fields) + pred_keys
        else:
            preds, structure = None, 3
            keys += 4 + len(fields)
        try:
            canonical = dumps({"fields": fields, "predecessors": wire_preds}, option=_SORT_STRICT)
        except orjson.JSONEncodeError:
            return None  # an integer beyond ±(2^53-1), or too deep for orjson
        nested = False
        for value in fields.values():
            kind = type(value)
            if kind is float:
                if value.is_integer() or -1e-5 < value < 1e-5:
                    return None  # JavaScript lays it out otherwise than orjson
            elif kind is dict or kind is list:
                nested = True
                counted = False  # nested keys are not counted
        if nested and (
            # Brackets beyond the canonical object's, the fields', the
            # predecessors' and their references' open containers nested in
            # the fields (or appear in strings): fewer than max_depth cannot
            # nest that deep.
            canonical.count(b"{") + canonical.count(b"[") - structure >= max_depth
            or layout(canonical) is not None
        ):
            return None
        if not canonical.isascii() and astral(canonical) is not None:
            return None  # a key may need UTF-16 order
        if b64(sha512(canonical).digest(), newline=False).decode() != fact_hash:
            return None
        facts.append(make(fact_type, fact_hash, fields, preds, not nested))
    if not facts:
        return None
    if (not counted or body.count(b":") != keys) and dumps(doc) != body:
        # Maybe a duplicate key (orjson keeps the last silently): the full path judges.
        return None
    if len(facts) > 1:
        order = {fact.ref: i for i, fact in enumerate(facts)}
        if len(order) == len(facts):
            for i, fact in enumerate(facts):
                for ref in fact.predecessor_refs():
                    if order.get(ref, -1) >= i:
                        return None  # misordered or a cycle: the full path names it
    elif preds is not None and facts[0].ref in set(facts[0].predecessor_refs()):
        return None  # names itself
    return facts


def _plain_predecessors(
    wire_preds: dict[str, Any],
) -> tuple[dict[str, FactRef | tuple[FactRef, ...]], int, int] | None:
    """The references of ``wire_preds`` when each is exactly a type and an
    88-character hash and each list is in hash order, the number of brackets
    the canonical form has without the fields' contents, and the number of
    keys in ``wire_preds`` (roles and references'); else ``None``."""
    preds: dict[str, FactRef | tuple[FactRef, ...]] = {}
    structure = 3
    keys = len(wire_preds)
    for role, value in wire_preds.items():
        if not role:
            return None
        if type(value) is list:
            refs = []
            for item in value:
                ref = _plain_ref(item)
                if ref is None:
                    return None
                refs.append(ref)
            if len(refs) > 1 and not _in_hash_order(refs):
                return None
            preds[role] = tuple(refs)
            structure += 1 + len(refs)
            keys += 2 * len(refs)
        else:
            ref = _plain_ref(value)
            if ref is None:
                return None
            preds[role] = ref
            structure += 1
            keys += 2
    return preds, structure, keys


def _in_hash_order(refs: list[FactRef]) -> bool:
    """Whether ``refs`` are in the order jinaga.js sorts a predecessor list (hash,
    then type, by UTF-16 code units)."""
    hashes = list(map(_hash_of, refs))
    if hashes == sorted(hashes) and len(set(hashes)) == len(hashes) and "".join(hashes).isascii():
        return True  # distinct ASCII hashes in order: code points order as UTF-16 does
    return sorted(refs, key=_ref_sort_key) == refs


_hash_of = itemgetter(1)


def _plain_ref(value: Any) -> FactRef | None:
    if type(value) is not dict or len(value) != 2:
        return None
    ref_type, ref_hash = value.get("type"), value.get("hash")
    if (
        type(ref_type) is not str
        or not ref_type
        or type(ref_hash) is not str
        or len(ref_hash) != HASH_CHARS
    ):
        return None
    return new_ref((ref_type, ref_hash))


def _refuse_duplicate_keys(body: bytes) -> None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            twice = sorted({key for key in keys if keys.count(key) > 1})
            raise MalformedEnvelope(f"duplicate JSON key(s) {', '.join(map(repr, twice))}")
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, MalformedEnvelope):
            raise
        # orjson accepted it; the stdlib parser may not (deep nesting): no verdict.


_Claim = tuple[dict[str, Any], FactRef, dict[str, FactRef | list[FactRef]]]

HASH_CHARS: Final = 88
"""Length of a fact hash as text: SHA-512, standard base64 with padding."""

RecordShape = tuple[str, Any, dict[str, Any], dict[str, FactRef | list[FactRef]]]
"""A fact record's ``(type, claimed hash, fields, predecessors)``, shape-checked."""


def record_shape(
    where: str,
    record: Any,
    error: Callable[[str], Exception],
    *,
    check_hash_length: bool = True,
) -> RecordShape:
    """Check the shape of one wire fact record ``{type, hash, fields, predecessors}``.

    The one place that reads that shape, for envelopes and for jinaga saves.
    ``type`` must be a non-empty string, ``hash`` a string (of
    :data:`HASH_CHARS` characters unless ``check_hash_length`` is false: the
    caller then compares it with the recomputed hash itself), ``fields`` and
    ``predecessors`` objects (missing: empty), each predecessor a reference
    ``{type, hash}`` or a list of them, with a non-empty type and a hash of
    :data:`HASH_CHARS` characters. Nothing is hashed or verified here.

    :param where: the record's place, e.g. ``facts[3]``; every message starts with it.
    :param error: builds the exception to raise from a message.
    :raises: ``error(message)``, the message naming the place and the problem.
    """
    if type(record) is not dict:
        raise error(f"{where} must be an object")
    fact_type, fact_hash = record.get("type"), record.get("hash")
    if type(fact_type) is not str or not fact_type:
        raise error(f"{where}.type must be a non-empty string")
    if check_hash_length:
        if type(fact_hash) is not str or len(fact_hash) != HASH_CHARS:
            raise error(f"{where}.hash must be an {HASH_CHARS}-character string")
    elif type(fact_hash) is not str:
        raise error(f"{where}.hash must be a string")
    fields = record.get("fields", {})
    if type(fields) is not dict:
        raise error(f"{where}.fields must be an object")
    wire_preds = record.get("predecessors", {})
    if type(wire_preds) is not dict:
        raise error(f"{where}.predecessors must be an object")
    preds: dict[str, FactRef | list[FactRef]] = {}
    for role, value in wire_preds.items():
        if type(value) is list:
            preds[role] = [_ref(where, role, item, error) for item in value]
        else:
            preds[role] = _ref(where, role, value, error)
    return fact_type, fact_hash, fields, preds


def _claim(index: int, wire: Any) -> _Claim:
    fact_type, fact_hash, _, preds = record_shape(f"facts[{index}]", wire, MalformedEnvelope)
    return wire, FactRef(fact_type, fact_hash), preds


def _ref(where: str, role: str, value: Any, error: Callable[[str], Exception]) -> FactRef:
    if type(value) is not dict:
        raise error(f"{where}.predecessors.{role} must be a reference object")
    ref_type, ref_hash = value.get("type"), value.get("hash")
    if type(ref_type) is not str or not ref_type or type(ref_hash) is not str:
        raise error(f"{where}.predecessors.{role} needs a string type and hash")
    if len(ref_hash) != HASH_CHARS:
        raise error(f"{where}.predecessors.{role}.hash must be {HASH_CHARS} characters")
    return FactRef(ref_type, ref_hash)


def _check_order(claims: list[_Claim]) -> None:
    """Refuse cycles among the envelope's facts and successors placed before predecessors."""
    position = {claimed: i for i, (_, claimed, _) in enumerate(claims)}
    if len(position) < len(claims):
        return  # the same fact twice: harmless, dedup handles it
    for i, (_, claimed, preds) in enumerate(claims):
        for value in preds.values():
            for ref in value if isinstance(value, list) else (value,):
                j = position.get(ref)
                if j is None:
                    continue
                if j == i:
                    raise PredecessorCycle(f"facts[{i}] ({claimed}) names itself as predecessor")
                if j > i:
                    # Either a cycle or a misordered envelope; both are refused.
                    if _reaches(claims, position, j, i):
                        raise PredecessorCycle(
                            f"facts[{i}] ({claimed}) and facts[{j}] ({claims[j][1]}) "
                            "are each other's ancestors"
                        )
                    raise MalformedEnvelope(
                        f"facts[{i}] ({claimed}) comes before its predecessor facts[{j}]; "
                        "envelopes must be in topological order"
                    )


def _reaches(claims: list[_Claim], position: dict[FactRef, int], start: int, goal: int) -> bool:
    seen: set[int] = set()
    stack = [start]
    while stack:
        i = stack.pop()
        if i == goal:
            return True
        if i in seen:
            continue
        seen.add(i)
        for value in claims[i][2].values():
            for ref in value if isinstance(value, list) else (value,):
                j = position.get(ref)
                if j is not None:
                    stack.append(j)
    return False
