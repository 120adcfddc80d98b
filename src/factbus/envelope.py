"""The envelope codec: facts <-> one broker message body (DESIGN.md §2).

Wire format, version 1 (orjson, compact)::

    {"v": 1, "facts": [{"type": ..., "hash": ..., "fields": {...},
                        "predecessors": {role: {"hash": ..., "type": ...} | [...]}}, ...]}

Facts are in topological order (predecessors first); the last fact is the
*head*, whose hash is the broker message id. Receivers recompute every hash.
Metadata that is not part of identity travels in broker headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from factbus.canonical import DEFAULT_MAX_DEPTH
from factbus.errors import (
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
from factbus.fact import Fact, FactRef

VERSION: Final = 1
_EMPTY: Final[dict[str, Any]] = {}
DEFAULT_MAX_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """What a receiver accepts; larger or deeper envelopes are rejected."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH


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


def encode(facts: Sequence[Fact]) -> bytes:
    """One envelope body carrying ``facts``, which must already be topologically ordered."""
    # Version 1, written by hand around each fact's cached wire bytes.
    return b'{"v":1,"facts":[' + b",".join([fact.wire_bytes() for fact in facts]) + b"]}"


def decode(body: bytes, limits: CodecLimits = CodecLimits()) -> list[Fact]:
    """Parse and verify an envelope; return its facts in topological order.

    :raises OversizedEnvelope, MalformedEnvelope, UnknownVersion, TooDeep,
        InvalidValue, PredecessorCycle, HashMismatch: with a precise message.
    """
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
                limits.max_depth,
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
