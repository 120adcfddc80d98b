"""Facts: immutable records identified by the hash of their content."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import orjson

from factbus.canonical import (
    DEFAULT_MAX_DEPTH,
    canonical_bytes,
    check_role,
    digest,
    freeze,
    role_needs_python_writer,
)
from factbus.errors import InvalidFact


class FactRef(NamedTuple):
    """The identity of a fact: its type and its hash (the type is not hashed)."""

    type: str
    hash: str

    def __str__(self) -> str:
        return f"{self.type}#{self.hash[:12]}"


PredecessorValue = FactRef | tuple[FactRef, ...]


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _fields_mapping(fields: Any) -> Mapping[str, Any]:
    """A fact's fields as given, ``None`` read as no fields (``{}``): what both
    :class:`Fact` and :meth:`Fact._from_wire` take.

    :raises InvalidFact: ``fields`` is not a mapping.
    """
    if fields is None:
        return {}
    if not isinstance(fields, Mapping):
        raise InvalidFact("fields", f"must be an object (a mapping), not {fields!r}")
    return fields


def _ref_sort_key(ref: FactRef) -> tuple[bytes, bytes]:
    # jinaga.js sorts a predecessor list by hash, then type, with JavaScript's `<`.
    return (_utf16(ref.hash), _utf16(ref.type))


class Fact:
    """An immutable fact: ``type``, ``fields`` and ``predecessors``.

    The hash is computed once, at construction, from the canonical form in
    DESIGN.md §1 and is byte-compatible with jinaga.js. Predecessors may be
    given as :class:`Fact` or :class:`FactRef` (one, or a list per role); a
    ``Fact`` given as predecessor is remembered so that publishing this fact
    can ship it too.

    Memory: a fact keeps its fields, its reference (type and hash: no other
    copy of either) and the flags that choose its canonical writer; the
    read-only views of ``fields`` and ``predecessors`` are made on each
    access and not kept (a view is an object the garbage collector tracks:
    kept, it was one survivor per fact whose fields a handler read, while a
    received fact is otherwise untracked), the canonical bytes are rewritten
    when asked for (:attr:`canonical`), and :meth:`wire_bytes` keeps a right-sized copy
    (orjson's own output reserves 4 KB). A fact decoded from an envelope keeps
    the parsed fields dict and freezes nested lists and objects in it when
    :attr:`fields` is first read.

    :raises InvalidFact: empty type, NaN/Infinity, lone surrogates, non-string
        keys, integers outside ±(2^53-1), nesting deeper than ``max_depth``.
    """

    __slots__ = (
        "_ancestors",
        "_fields",
        "_predecessors",
        "_ref",
        "_wire_bytes",
        "_writer",
    )

    _fields: dict[str, Any]
    _predecessors: dict[str, PredecessorValue]
    _ancestors: tuple[Fact, ...]
    _ref: FactRef
    _wire_bytes: bytes | None
    _writer: int
    """Bit 1: the Python writer (UTF-16 key order); bit 2: JavaScript float layout;
    bit 4: ``_fields`` is a received dict whose nested lists and objects are not
    frozen yet (frozen when :attr:`fields` is first read)."""

    def __init__(
        self,
        type: str,
        fields: Mapping[str, Any] | None = None,
        predecessors: Mapping[str, Any] | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if type.__class__ is not str or not type:
            raise InvalidFact("type", f"must be a non-empty string, not {type!r}")
        if fields.__class__ is not dict:
            fields = _fields_mapping(fields)
        frozen = freeze(fields, path="fields", max_depth=max_depth)
        python_writer = frozen.needs_python_writer
        preds: dict[str, PredecessorValue] = {}
        ancestors: list[Fact] = []
        for role, given in (predecessors or {}).items():
            check_role(role)
            python_writer = python_writer or role_needs_python_writer(role)
            if isinstance(given, Fact | FactRef):
                preds[role] = _as_ref(given, role, ancestors)
            elif isinstance(given, Sequence) and not isinstance(given, str):
                refs = [_as_ref(item, role, ancestors) for item in given]
                refs.sort(key=_ref_sort_key)
                preds[role] = tuple(refs)
            else:
                raise InvalidFact(
                    f"predecessors.{role}",
                    f"must be a Fact, a FactRef or a list of them, not {given!r}",
                )
        self._init(
            type,
            frozen.value,
            preds or _NO_PREDECESSORS,
            tuple(ancestors) if ancestors else (),
            python_writer | (frozen.needs_float_layout << 1),
            None,
        )

    def _init(
        self,
        type: str,
        fields: dict[str, Any],
        preds: dict[str, PredecessorValue],
        ancestors: tuple[Fact, ...],
        writer: int,
        wire_predecessors: dict[str, Any] | None,
    ) -> None:
        """Set every slot and compute the hash (``wire_predecessors``: the
        predecessors' wire form when the caller has it, exactly as hashed)."""
        type = _intern(type)
        self._fields = fields
        self._predecessors = preds
        self._ancestors = ancestors
        self._writer = writer
        if wire_predecessors is None:
            wire_predecessors = _wire_predecessors(preds)
        self._ref = FactRef(
            type,
            digest(canonical_bytes(fields, wire_predecessors, bool(writer & 1), bool(writer & 2))),
        )
        self._wire_bytes = None

    @classmethod
    def _from_wire(
        cls,
        type: str,
        fields: Any,
        preds: dict[str, FactRef | list[FactRef]],
        wire_predecessors: dict[str, Any],
        max_depth: int,
    ) -> Fact:
        """A fact as received (see :func:`factbus.envelope.decode`): ``preds`` are
        checked references; ``wire_predecessors`` their wire form. The hash is
        computed from the fields and references as always; the wire form is
        reused for it only when it is exactly what would be hashed (two keys per
        reference, lists in hash order), else the references are rewritten."""
        if fields.__class__ is not dict:  # what orjson gives; else as Fact() takes it
            fields = _fields_mapping(fields)
        frozen = freeze(fields, path="fields", max_depth=max_depth)
        python_writer = frozen.needs_python_writer
        refs: dict[str, PredecessorValue] = {}
        reuse = True
        for role, given in preds.items():
            check_role(role)
            if not role.isascii():
                python_writer = python_writer or role_needs_python_writer(role)
            if isinstance(given, list):
                listed = sorted(given, key=_ref_sort_key)
                reuse = (
                    reuse and listed == given and all(len(w) == 2 for w in wire_predecessors[role])
                )
                refs[role] = tuple(listed)
            else:
                refs[role] = given
                reuse = reuse and len(wire_predecessors[role]) == 2
        fact = cls.__new__(cls)
        fact._init(
            type,
            frozen.value,
            refs or _NO_PREDECESSORS,
            (),
            python_writer | (frozen.needs_float_layout << 1),
            wire_predecessors if reuse else None,
        )
        return fact

    @property
    def type(self) -> str:
        return self._ref[0]

    @property
    def fields(self) -> Mapping[str, Any]:
        """Read-only; nested objects are read-only mappings and lists are tuples.

        A new view on each read (not kept by the fact: see the class's
        "Memory"); a loop that reads many fields may read this once."""
        if self._writer & 4:
            # Received and verified: freezing cannot fail (no depth limit here).
            self._fields = freeze(self._fields, path="fields", max_depth=1 << 30).value
            self._writer &= ~4
        return MappingProxyType(self._fields)

    @property
    def predecessors(self) -> Mapping[str, PredecessorValue]:
        """Role -> :class:`FactRef`, or a tuple of them sorted as they are hashed."""
        return MappingProxyType(self._predecessors)

    @property
    def hash(self) -> str:
        return self._ref[1]

    @property
    def ref(self) -> FactRef:
        return self._ref

    @property
    def canonical(self) -> bytes:
        """The exact bytes the hash is computed from (written again on each access)."""
        writer = self._writer
        return canonical_bytes(
            self._fields,
            _wire_predecessors(self._predecessors),
            bool(writer & 1),
            bool(writer & 2),
        )

    @property
    def ancestors_given(self) -> tuple[Fact, ...]:
        """Predecessors that were given as :class:`Fact` objects (not refs)."""
        return self._ancestors

    def predecessor_refs(self) -> Iterator[FactRef]:
        """Every predecessor reference, each role's in hash order."""
        for value in self._predecessors.values():
            if isinstance(value, FactRef):
                yield value
            else:
                yield from value

    def wire_bytes(self) -> bytes:
        """:meth:`to_wire` as compact JSON (computed once): how envelopes and stores carry it."""
        if self._wire_bytes is None:
            # A right-sized copy: orjson's output keeps a 4 KB allocation.
            self._wire_bytes = bytes(
                memoryview(orjson.dumps(self.to_wire(), default=_plain_mapping))
            )
        return self._wire_bytes

    def to_wire(self) -> dict[str, Any]:
        """The fact as carried in an envelope: type, hash, fields, predecessors.

        For serializing: ``fields`` is the fact's own dict (not a copy; read
        :attr:`fields` for a read-only view), so the result must not be changed.
        """
        return {
            "type": self._ref[0],
            "hash": self._ref[1],
            "fields": self._fields,
            "predecessors": _wire_predecessors(self._predecessors),
        }

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fact):
            return self._ref == other._ref
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._ref)

    def __repr__(self) -> str:
        return f"Fact({self._ref[0]!r}, hash={self._ref[1][:12]}..., fields={self._fields!r})"


def received_fact(
    type: str,
    hash: str,
    fields: dict[str, Any],
    preds: dict[str, PredecessorValue] | None,
    flat: bool,
) -> Fact:
    """A fact :func:`factbus.envelope.decode` verified itself: ``hash`` is the
    hash it recomputed from ``fields`` (the parsed dict, which the fact now
    owns) and ``preds``, checked references; ``flat``: no list or object nested
    in ``fields`` (else they are frozen when :attr:`Fact.fields` is first read)."""
    fact = _new_fact(Fact)
    type = _TYPES.get(type) or _intern(type)
    fact._fields = fields
    fact._predecessors = preds or _NO_PREDECESSORS
    fact._ancestors = ()
    fact._writer = 0 if flat else 4
    fact._ref = _new_ref(FactRef, (type, hash))
    fact._wire_bytes = None
    return fact


_new_fact = object.__new__
_new_ref = tuple.__new__
new_ref: Final = partial(_new_ref, FactRef)
"""``new_ref((type, hash))`` is ``FactRef(type, hash)`` without the Python-level
``__new__`` a NamedTuple has (no check: for references already checked)."""

ref_of: Final = attrgetter("_ref")
"""``ref_of(fact)`` is ``fact.ref`` (``map(ref_of, facts)`` runs in C)."""


def predecessors_of(facts: Iterable[Fact]) -> set[FactRef]:
    """Every predecessor reference of ``facts`` (a step's, for one store look-up)."""
    out: set[FactRef] = set()
    for preds in filter(None, map(_predecessors_of, facts)):
        for value in preds.values():
            if type(value) is FactRef:
                out.add(value)
            else:
                out.update(value)
    return out


_predecessors_of = attrgetter("_predecessors")

_NO_PREDECESSORS: dict[str, PredecessorValue] = {}
"""Shared by every fact without predecessors (never mutated)."""

_TYPES: dict[str, str] = {}


def _intern(name: str) -> str:
    """One string object per fact type name (a received fact's is a fresh copy);
    bounded: past 4,096 distinct names, new names are kept as given."""
    kept = _TYPES.get(name)
    if kept is None:
        if len(_TYPES) >= 4096:
            return name
        kept = _TYPES[name] = name
    return kept


def _plain_mapping(obj: Any) -> Any:
    if isinstance(obj, MappingProxyType):
        return dict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _as_ref(given: Any, role: str, ancestors: list[Fact]) -> FactRef:
    if isinstance(given, Fact):
        ancestors.append(given)
        return given.ref
    if isinstance(given, FactRef):
        if type(given.type) is not str or not given.type:
            raise InvalidFact(f"predecessors.{role}", "a FactRef needs a non-empty type")
        if type(given.hash) is not str or len(given.hash) != 88:
            raise InvalidFact(f"predecessors.{role}", f"{given.hash!r} is not an 88-character hash")
        return given
    raise InvalidFact(f"predecessors.{role}", f"must be a Fact or a FactRef, not {given!r}")


def _wire_predecessors(preds: Mapping[str, PredecessorValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, value in preds.items():
        if isinstance(value, FactRef):
            out[role] = {"hash": value.hash, "type": value.type}
        else:
            out[role] = [{"hash": ref.hash, "type": ref.type} for ref in value]
    return out
