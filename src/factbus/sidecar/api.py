"""The sidecar's JSON shapes: facts as the application writes them, and errors.

One module turns what an application sends (``POST /facts`` bodies and outbox
rows) into :class:`~factbus.fact.Fact` objects, so both paths accept exactly the
same thing and refuse it with the same stable error codes:

``{"type": "Shop.Order", "fields": {...}, "predecessors": {role: P | [P, ...]}}``
where each ``P`` is either a reference ``{"type": ..., "hash": ...}`` (an object
with exactly those two keys) or a nested fact of the same shape (which may also
claim its ``"hash"``; a claim that does not match the recomputed hash is
refused). ``fields`` and ``predecessors`` may be left out (empty).

Every refusal is a :class:`RequestError` whose ``field`` names where the problem
is, as a path into the request (``facts[0].fields.total``,
``facts[1].predecessors.order``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from factbus.canonical import DEFAULT_MAX_DEPTH
from factbus.errors import FactbusError, InvalidFact
from factbus.fact import Fact, FactRef

HASH_LENGTH = 88
FACT_KEYS = frozenset({"type", "fields", "predecessors", "hash"})


class RequestError(FactbusError):
    """A request (or outbox row) that is refused; nothing was changed.

    ``status`` is the HTTP status, ``code`` a stable machine-readable reason
    (``malformed-json``, ``invalid-value``, ``unknown-predecessor``, ...),
    ``field`` the path of the offending value when there is one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def as_json(self) -> dict[str, Any]:
        """The response body: ``{"error": {"code", "message"[, "field"]}}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}

    @property
    def reason(self) -> str:
        """``code: message``, as recorded for a refused outbox row."""
        return f"{self.code}: {self.message}"


async def read_body(chunks: AsyncIterable[bytes], limit: int, declared: str | None = None) -> bytes:
    """A request body read from ``chunks`` (e.g. Starlette's ``request.stream()``),
    refused as soon as it is known to exceed ``limit`` bytes: from the declared
    ``Content-Length`` (``declared``) before reading, else while reading.

    :raises RequestError: 413 ``too-large``.
    """
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "too-large", f"the body of {declared} bytes exceeds {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "too-large", f"the body is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


@dataclass
class ParsedFacts:
    """Facts parsed from one request, and the predecessors it gave by reference.

    ``facts`` are the top-level facts in request order (nested facts are
    reachable as their ancestors and shipped with them). ``references`` maps
    each fact reference to the path where it was first given; a reference to a
    fact of the same request (top-level or nested) is not listed.
    """

    facts: list[Fact]
    references: dict[FactRef, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    """Where each of ``facts`` is in the request (``facts[0]``, or ``fact``)."""

    def check_size(self, max_bytes: int) -> None:
        """Refuse a fact whose envelope (it and its nested predecessors) would exceed
        ``max_bytes``: every receiver would dead-letter it as oversized.

        :raises RequestError: 413 ``too-large`` naming the fact.
        """
        for fact, path in zip(self.facts, self.paths, strict=True):
            size = sum(len(f.wire_bytes()) + 1 for f in _closure(fact)) + ENVELOPE_OVERHEAD
            if size > max_bytes:
                raise RequestError(
                    413,
                    "too-large",
                    f"{path}: its envelope would be about {size} bytes, over the limit of "
                    f"{max_bytes} (max_envelope_bytes)",
                    path,
                )


ENVELOPE_OVERHEAD = 32
"""Bytes an envelope adds around its facts (version, brackets)."""


def _closure(fact: Fact) -> list[Fact]:
    seen: dict[FactRef, Fact] = {}
    stack = [fact]
    while stack:
        current = stack.pop()
        if current.ref not in seen:
            seen[current.ref] = current
            stack.extend(current.ancestors_given)
    return list(seen.values())


def decode_json(body: bytes) -> Any:
    """Parse a JSON document.

    :raises RequestError: 400 ``malformed-json`` naming the position, or a key that
        appears twice in one object.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(400, "malformed-json", f"the body is not JSON: {error}") from None
    if b'"' in body:
        # orjson keeps the last of duplicate keys silently; a fact must not be ambiguous.
        try:
            json.loads(body, object_pairs_hook=_refuse_duplicates)
        except RecursionError:
            raise RequestError(400, "malformed-json", "the body is nested too deeply") from None
    return document


def _refuse_duplicates(items: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in items]
    if len(set(keys)) != len(keys):
        twice = sorted({key for key in keys if keys.count(key) > 1})
        raise RequestError(
            400,
            "malformed-json",
            f"duplicate JSON key(s) {', '.join(map(repr, twice))}: which value is meant?",
        )
    return dict(items)


def parse_facts_request(document: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> ParsedFacts:
    """The facts of a ``POST /facts`` body ``{"facts": [fact, ...]}`` (at least one).

    :raises RequestError: 400 naming the offending field.
    """
    if not isinstance(document, dict):
        raise RequestError(400, "invalid-request", 'the body must be an object {"facts": [...]}')
    extra = sorted(set(document) - {"facts"})
    if extra:
        raise RequestError(
            400,
            "invalid-request",
            f'{extra[0]}: unknown key (the body is {{"facts": [...]}})',
            extra[0],
        )
    items = document.get("facts")
    if not isinstance(items, list) or not items:
        raise RequestError(400, "invalid-request", "facts must be a non-empty list", "facts")
    parsed = ParsedFacts([])
    for index, item in enumerate(items):
        parsed.facts.append(_fact(item, f"facts[{index}]", parsed, max_depth))
        parsed.paths.append(f"facts[{index}]")
    _drop_own_references(parsed)
    return parsed


def parse_fact(
    document: Any, *, path: str = "fact", max_depth: int = DEFAULT_MAX_DEPTH
) -> ParsedFacts:
    """One fact object (an outbox row), with its references.

    :raises RequestError: 400 naming the offending field.
    """
    parsed = ParsedFacts([])
    parsed.facts.append(_fact(document, path, parsed, max_depth))
    parsed.paths.append(path)
    _drop_own_references(parsed)
    return parsed


def _drop_own_references(parsed: ParsedFacts) -> None:
    own: set[FactRef] = set()
    stack = list(parsed.facts)
    while stack:
        fact = stack.pop()
        if fact.ref not in own:
            own.add(fact.ref)
            stack.extend(fact.ancestors_given)
    for ref in own & parsed.references.keys():
        del parsed.references[ref]


def _fact(value: Any, path: str, parsed: ParsedFacts, max_depth: int) -> Fact:
    if not isinstance(value, dict):
        raise RequestError(400, "invalid-fact", f"{path}: a fact must be an object", path)
    extra = sorted(set(value) - FACT_KEYS)
    if extra:
        raise RequestError(
            400,
            "invalid-fact",
            f"{path}.{extra[0]}: unknown key (a fact has type, fields, predecessors, hash)",
            f"{path}.{extra[0]}",
        )
    fact_type = value.get("type")
    if not isinstance(fact_type, str) or not fact_type:
        raise RequestError(
            400, "invalid-fact", f"{path}.type: must be a non-empty string", f"{path}.type"
        )
    fields = value.get("fields", {})
    if not isinstance(fields, dict):
        raise RequestError(
            400, "invalid-fact", f"{path}.fields: must be an object", f"{path}.fields"
        )
    given = value.get("predecessors", {})
    if not isinstance(given, dict):
        raise RequestError(
            400, "invalid-fact", f"{path}.predecessors: must be an object", f"{path}.predecessors"
        )
    claimed = value.get("hash")
    if claimed is not None and not isinstance(claimed, str):
        raise RequestError(
            400,
            "invalid-fact",
            f"{path}.hash: must be a string (the fact's base64 SHA-512 hash), "
            f"not {_json_type(claimed)}",
            f"{path}.hash",
        )
    predecessors: dict[str, Fact | FactRef | list[Fact | FactRef]] = {}
    for role, item in given.items():
        role_path = f"{path}.predecessors.{role}"
        if isinstance(item, list):
            predecessors[role] = [
                _predecessor(one, f"{role_path}[{i}]", parsed, max_depth)
                for i, one in enumerate(item)
            ]
        else:
            predecessors[role] = _predecessor(item, role_path, parsed, max_depth)
    try:
        fact = Fact(fact_type, fields, predecessors, max_depth=max_depth)
    except InvalidFact as error:
        where = f"{path}.{error.field}"
        raise RequestError(400, "invalid-value", f"{where}: {error.reason}", where) from None
    if claimed is not None and claimed != fact.hash:
        raise RequestError(
            400,
            "hash-mismatch",
            f"{path}.hash: {claimed!r} is not the hash of this content ({fact.hash})",
            f"{path}.hash",
        )
    return fact


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (``a number``, ``an object``...)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _predecessor(value: Any, path: str, parsed: ParsedFacts, max_depth: int) -> Fact | FactRef:
    if isinstance(value, dict) and value.keys() == {"type", "hash"}:
        ref = reference(value, path)
        parsed.references.setdefault(ref, path)
        return ref
    if isinstance(value, dict):
        return _fact(value, path, parsed, max_depth)
    raise RequestError(
        400,
        "invalid-fact",
        f"{path}: a predecessor is a reference {{type, hash}}, a nested fact, or a list of them",
        path,
    )


def reference(value: Mapping[str, Any], path: str) -> FactRef:
    """A :class:`FactRef` from ``{"type": ..., "hash": ...}``.

    :raises RequestError: 400 ``invalid-reference``.
    """
    fact_type, fact_hash = value.get("type"), value.get("hash")
    if not isinstance(fact_type, str) or not fact_type:
        raise RequestError(
            400, "invalid-reference", f"{path}.type: must be a non-empty string", f"{path}.type"
        )
    if not is_hash(fact_hash):
        raise RequestError(
            400,
            "invalid-reference",
            f"{path}.hash: {fact_hash!r} is not an 88-character base64 SHA-512 hash",
            f"{path}.hash",
        )
    assert isinstance(fact_hash, str)
    return FactRef(fact_type, fact_hash)


_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def is_hash(value: object) -> bool:
    """Whether ``value`` looks like a fact hash (88 base64 characters)."""
    return isinstance(value, str) and len(value) == HASH_LENGTH and set(value) <= _BASE64


def unknown_predecessor(ref: FactRef, path: str) -> RequestError:
    """The refusal of a reference to a fact this sidecar neither received nor published."""
    return RequestError(
        400,
        "unknown-predecessor",
        f"{path}: {ref.type} {ref.hash} is not known to this sidecar; "
        "send the predecessor itself (a nested fact) or publish it first",
        path,
    )
