"""Jinaga's fact transfer formats: ``application/x-jinaga-graph-v1`` and JSON saves.

The graph format, as jinaga.js 6.11 writes and reads it, is a stream of
UTF-8 lines. Each fact is a block::

    "Type"                      JSON string
    {"role": 0, "list": [0, 1]} JSON object: role -> index (or list of indexes)
                                of facts earlier in the same stream
    {"field": "value"}          JSON object: the fields
    PK0                         optional signature lines, in pairs:
    "signature"                 a public-key reference and a JSON string
    (blank line)

A public key is declared before its first use by the block ``PKn`` /
JSON string / blank line, numbered from 0 in order. Blank lines between blocks
are ignored. Hashes are not carried: the reader computes them, so a graph
cannot claim a hash its content does not have.

:func:`parse_graph` returns verified :class:`~factbus.fact.Fact` objects in
stream order (which is topological) or raises :class:`JinagaFormatError`
naming the line and the problem; it never returns part of a bad graph.
Signatures are checked for shape and then dropped: factbus facts carry none.

:func:`parse_save_json` reads ``{"facts": [{type, hash, fields,
predecessors}, ...]}`` (what jinaga.js posts when a replicator does not
accept the graph format) and recomputes every hash. :func:`write_graph`
writes facts in the graph format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import orjson

from factbus.canonical import DEFAULT_MAX_DEPTH
from factbus.envelope import record_shape, topological
from factbus.errors import FactbusError, InvalidFact
from factbus.fact import Fact, FactRef

CONTENT_TYPE_GRAPH: Final = "application/x-jinaga-graph-v1"
DEFAULT_MAX_GRAPH_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_FACTS: Final = 100_000


class JinagaFormatError(FactbusError, ValueError):
    """A graph or JSON save that cannot be read; the message names where and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- graph: read -----------------------------------------------------------


def parse_graph(
    body: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_GRAPH_BYTES,
    max_facts: int = DEFAULT_MAX_FACTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[Fact]:
    """Read a whole ``application/x-jinaga-graph-v1`` body; facts in stream order.

    Every predecessor index must name a fact earlier in the stream, so the
    result is topologically ordered and self-contained. A fact repeated in
    the stream appears once.

    :raises JinagaFormatError: not UTF-8, too large, a line that is not the
        JSON expected there, an index out of range, a value that cannot be
        part of a fact (NaN, unsafe integer, too deep...), a malformed
        signature or public-key block.
    """
    size = len(body.encode("utf-8", "surrogatepass")) if isinstance(body, str) else len(body)
    if size > max_bytes:
        raise JinagaFormatError(f"graph of {size} bytes exceeds the limit of {max_bytes}")
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JinagaFormatError(f"graph is not UTF-8: {exc}") from None
    else:
        text = body
    return _GraphReader(text.split("\n"), max_facts, max_depth).read()


class _GraphReader:
    def __init__(self, lines: list[str], max_facts: int, max_depth: int) -> None:
        self.lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        self.pos = 0  # index of the next line to read
        self.max_facts = max_facts
        self.max_depth = max_depth
        self.refs: list[FactRef] = []
        self.facts: dict[FactRef, Fact] = {}
        self.public_keys = 0

    def read(self) -> list[Fact]:
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line == "":
                self.pos += 1
                continue
            if line.startswith("PK"):
                self._public_key()
            else:
                self._fact()
        return list(self.facts.values())

    def _fail(self, line_index: int, problem: str) -> JinagaFormatError:
        return JinagaFormatError(f"graph line {line_index + 1}: {problem}")

    def _next(self, what: str) -> tuple[int, str]:
        if self.pos >= len(self.lines) or self.lines[self.pos] == "":
            raise self._fail(self.pos, f"expected {what}, found the end of the block")
        index = self.pos
        self.pos += 1
        return index, self.lines[index]

    def _json(self, what: str) -> tuple[int, Any]:
        index, line = self._next(what)
        try:
            return index, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise self._fail(index, f"{what} is not valid JSON ({exc})") from None

    def _pk_index(self, index: int, line: str) -> int:
        digits = line[2:]
        if not digits.isascii() or not digits.isdigit() or len(digits) > 9:
            raise self._fail(index, f"expected a public key reference PKn, found {line[:40]!r}")
        return int(digits)

    def _public_key(self) -> None:
        index, line = self._next("a public key declaration")
        number = self._pk_index(index, line)
        if number != self.public_keys:
            raise self._fail(
                index, f"public key PK{number} is out of order (expected PK{self.public_keys})"
            )
        key_line, key = self._json("a public key (JSON string)")
        if type(key) is not str:
            raise self._fail(key_line, "a public key must be a JSON string")
        if self.pos < len(self.lines) and self.lines[self.pos] != "":
            raise self._fail(self.pos, "expected a blank line after the public key")
        self.pos += 1
        self.public_keys += 1

    def _fact(self) -> None:
        if len(self.refs) >= self.max_facts:
            raise self._fail(self.pos, f"more than {self.max_facts} facts in one graph")
        type_line, fact_type = self._json("a fact type (JSON string)")
        if type(fact_type) is not str or not fact_type:
            raise self._fail(type_line, "a fact type must be a non-empty JSON string")
        preds_line, indexes = self._json("the predecessor indexes (JSON object)")
        if type(indexes) is not dict:
            raise self._fail(preds_line, "the predecessor indexes must be a JSON object")
        predecessors: dict[str, FactRef | list[FactRef]] = {}
        for role, value in indexes.items():
            if type(value) is list:
                predecessors[role] = [self._predecessor(preds_line, role, i) for i in value]
            else:
                predecessors[role] = self._predecessor(preds_line, role, value)
        fields_line, fields = self._json("the fields (JSON object)")
        if type(fields) is not dict:
            raise self._fail(fields_line, "the fields must be a JSON object")
        try:
            fields = js_numbers(fields, self.max_depth)
            fact = Fact(fact_type, fields, predecessors, max_depth=self.max_depth)
        except InvalidFact as exc:
            raise self._fail(fields_line, f"{fact_type}: {exc}") from None
        self._signatures()
        self.refs.append(fact.ref)
        self.facts.setdefault(fact.ref, fact)

    def _predecessor(self, line: int, role: str, value: Any) -> FactRef:
        if type(value) is not int or not 0 <= value < len(self.refs):
            raise self._fail(
                line,
                f"predecessor {role!r} index {value!r} does not name an earlier fact "
                f"(0..{len(self.refs) - 1})",
            )
        return self.refs[value]

    def _signatures(self) -> None:
        while self.pos < len(self.lines) and self.lines[self.pos] != "":
            index, line = self._next("a signature's public key reference")
            if not line.startswith("PK"):
                raise self._fail(index, f"expected a public key reference PKn, found {line[:40]!r}")
            number = self._pk_index(index, line)
            if number >= self.public_keys:
                raise self._fail(index, f"public key PK{number} has not been declared")
            sig_line, signature = self._json("a signature (JSON string)")
            if type(signature) is not str:
                raise self._fail(sig_line, "a signature must be a JSON string")


def js_numbers(value: Any, max_depth: int) -> Any:
    """``value`` as JavaScript's ``JSON.parse`` reads it: every number is a double.

    JSON written by JavaScript may hold an integer literal beyond ±(2^53-1)
    (``JSON.stringify(2**53)`` is ``9007199254740992``); JavaScript reads it
    as a double, so it becomes a float here (factbus refuses such ints). Values
    nested deeper than ``max_depth`` are left alone: the fact refuses them.
    """
    kind = type(value)
    if kind is int:
        return value if -(2**53 - 1) <= value <= 2**53 - 1 else float(value)
    if max_depth < 0:
        return value
    if kind is dict:
        return {key: js_numbers(item, max_depth - 1) for key, item in value.items()}
    if kind is list:
        return [js_numbers(item, max_depth - 1) for item in value]
    return value


# -- graph: write ----------------------------------------------------------


def write_graph(facts: Iterable[Fact]) -> bytes:
    """The facts in the graph format, each once, predecessors first.

    The facts are put in topological order; every predecessor of every fact
    must be among them (the format names predecessors by position).

    :raises ValueError: a predecessor that is not among ``facts``.
    """
    index: dict[FactRef, int] = {}
    out: list[bytes] = []
    for fact in topological(facts):
        indexes: dict[str, int | list[int]] = {}
        for role, value in fact.predecessors.items():
            if isinstance(value, FactRef):
                indexes[role] = _position(index, fact, role, value)
            else:
                indexes[role] = [_position(index, fact, role, ref) for ref in value]
        out.append(
            b"%s\n%s\n%s\n\n"
            % (
                orjson.dumps(fact.type),
                orjson.dumps(indexes),
                orjson.dumps(fact.fields, default=_plain),
            )
        )
        index[fact.ref] = len(index)
    return b"".join(out)


def _position(index: Mapping[FactRef, int], fact: Fact, role: str, ref: FactRef) -> int:
    try:
        return index[ref]
    except KeyError:
        raise ValueError(
            f"{fact.ref} names predecessor {ref} ({role}), which is not in the graph"
        ) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, MappingProxyType):
        return dict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


# -- JSON save format ------------------------------------------------------


def parse_save_json(
    body: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_GRAPH_BYTES,
    max_facts: int = DEFAULT_MAX_FACTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[Fact]:
    """Read ``{"facts": [{type, hash, fields, predecessors}, ...]}``; facts topologically.

    Every hash is recomputed and must equal the one claimed. Predecessors may
    name facts that are not in the message (the caller decides whether it
    knows them).

    :raises JinagaFormatError: naming ``facts[i]`` and the problem.
    """
    if len(body) > max_bytes:
        raise JinagaFormatError(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JinagaFormatError(f"body is not valid JSON ({exc})") from None
    if type(doc) is not dict or type(doc.get("facts")) is not list:
        raise JinagaFormatError('expected a JSON object with a "facts" list')
    records = doc["facts"]
    if len(records) > max_facts:
        raise JinagaFormatError(f"more than {max_facts} facts in one save")
    return topological(fact_records(records, max_depth=max_depth))


def fact_records(records: Sequence[Any], *, max_depth: int = DEFAULT_MAX_DEPTH) -> list[Fact]:
    """Verify jinaga fact records (``{type, hash, fields, predecessors}``), in the given order.

    :raises JinagaFormatError: a record of the wrong shape, or whose hash is not
        the hash of its content.
    """
    facts: list[Fact] = []
    for i, record in enumerate(records):
        where = f"facts[{i}]"
        fact_type, claimed, fields, predecessors = record_shape(
            where, record, JinagaFormatError, check_hash_length=False
        )
        try:
            fields = js_numbers(fields, max_depth)
            fact = Fact(fact_type, fields, predecessors, max_depth=max_depth)
        except InvalidFact as exc:
            raise JinagaFormatError(f"{where} ({fact_type}): {exc}") from None
        if fact.hash != claimed:
            raise JinagaFormatError(
                f"{where} ({fact_type}) claims hash {claimed[:16]!r}... "
                f"but its content hashes to {fact.hash[:16]}..."
            )
        facts.append(fact)
    return facts


def fact_record(fact: Fact) -> dict[str, Any]:
    """The jinaga.js FactRecord of a fact (as /load returns it): plain JSON types."""
    return orjson.loads(fact.wire_bytes())  # type: ignore[no-any-return]
