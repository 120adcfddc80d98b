"""What a batch of newly handled facts changes in the views: pure logic, no I/O.

The views are a function of the *set* of facts handled (DESIGN.md §7). The
pipeline hands facts over in causal order (every predecessor before its
successors), which makes maintaining them incremental and order-free:

- **row**: a fact of a table's type adds its row (visible unless hidden).
- **property**: a property fact becomes a leaf of its entity and removes the
  leaves it names as ``prior`` (same type, same entity). A fact named as prior
  was handled before the fact naming it, and is handled only once, so it never
  comes back as a leaf.
- **unless**: a successor ``S`` of the named type naming a row's fact in the
  named role hides the row while ``S`` is an active *hider*. ``S`` always comes
  after the row's fact, so the row is never shown late. A revoker ``R`` of
  ``S`` (the one-level nested ``unless``) comes after ``S`` and removes it from
  the hiders; the row comes back when none is left.

:class:`Projection` works in three phases so that a whole pipeline step costs a
few queries whatever its size: :meth:`Projection.needs_bodies` and
:meth:`Projection.needs_state` name what to read, :meth:`Projection.apply`
computes the net :class:`Writes` (rows to upsert, delete or update, leaves and
hiders to add or drop) and the :class:`Change` notifications, in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import orjson

from factbus.fact import Fact, FactRef
from factbus.sidecar.config import ColumnSpec, PropertySpec, SidecarConfig, TableSpec, UnlessSpec

Op = Literal["added", "changed", "removed"]
Kind = Literal["key", "pred", "value", "candidates"]
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Change:
    """A row added, changed or removed in ``table`` (key = the row's ``hash``).

    ``row`` is the row as :meth:`~factbus.sidecar.views.Views.rows` returns it,
    ``None`` for ``removed``. Fired only after the transaction that made it
    committed.
    """

    table: str
    op: Op
    key: str
    row: dict[str, Any] | None


def _plain(value: Any) -> Any:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(value: Any) -> str:
    """Compact JSON with sorted keys: the same text for the same value on every node."""
    return orjson.dumps(value, default=_plain, option=orjson.OPT_SORT_KEYS).decode()


def source_value(fact: Fact, column: ColumnSpec) -> Any:
    """The value ``column`` takes from ``fact`` (``None`` where the path is missing).

    ``predecessors.<role>`` gives the hash, or a tuple of hashes for a list role.
    """
    if column.kind == "predecessors":
        pred = fact.predecessors.get(column.path[0])
        if pred is None:
            return None
        if isinstance(pred, FactRef):
            return pred.hash
        return tuple(ref.hash for ref in pred)
    value: Any = fact.fields
    for part in column.path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return value


def _kind(column: ColumnSpec) -> Kind:
    return "pred" if column.kind == "predecessors" else "value"


def refs_in(fact: Fact, role: str) -> Iterator[FactRef]:
    pred = fact.predecessors.get(role)
    if pred is None:
        return
    if isinstance(pred, FactRef):
        yield pred
    else:
        yield from pred


@dataclass
class Writes:
    """The net effect of one batch, per physical table name.

    ``rows``: full rows to insert or replace (value per column, in the table's
    column order, ``hash`` first); ``deleted``: row keys to delete;
    ``updates[(table, property column)]``: ``(key, value, candidates)`` for rows
    that stay, whose property changed. ``leaves_added``/``leaves_dropped`` and
    ``hiders_added``/``hiders_dropped`` are the bookkeeping rows.
    """

    rows: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=dict)
    updates: dict[tuple[str, str], list[tuple[str, Any, list[Any]]]] = field(default_factory=dict)
    leaves_added: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    """(table, column, entity, leaf, value as JSON)."""
    leaves_dropped: list[tuple[str, str, str, str]] = field(default_factory=list)
    hiders_added: list[tuple[str, str, str]] = field(default_factory=list)
    """(table, row key, hider hash)."""
    hiders_dropped: list[tuple[str, str, str]] = field(default_factory=list)
    changes: list[tuple[str, Op, str]] = field(default_factory=list)
    """(logical table, op, key); rows are read back for listeners."""

    def __bool__(self) -> bool:
        return bool(
            self.rows
            or self.deleted
            or self.updates
            or self.leaves_added
            or self.leaves_dropped
            or self.hiders_added
            or self.hiders_dropped
        )


@dataclass
class State:
    """What the store holds for the keys :meth:`Projection.needs_state` named.

    ``bodies``: archived facts; ``leaves[(table, entity)][column][leaf]`` the
    leaf values (decoded JSON); ``hiders[(table, row)]`` active hider hashes.
    Table names here are physical names.
    """

    bodies: dict[FactRef, Fact] = field(default_factory=dict)
    leaves: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    hiders: dict[tuple[str, str], set[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Revoker:
    table: TableSpec
    outer: UnlessSpec
    inner: UnlessSpec


class Projection:
    """The views of ``config`` (all tables, or those named in ``only``).

    ``names`` maps a logical table name to the physical one written (rebuild
    writes ``orders__new``); bookkeeping rows are keyed by the physical name.
    """

    def __init__(
        self,
        config: SidecarConfig,
        only: Iterable[str] | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        wanted = set(only) if only is not None else {t.name for t in config.tables}
        self.tables = tuple(t for t in config.tables if t.name in wanted)
        self.names = {t.name: (names or {}).get(t.name, t.name) for t in self.tables}
        self.properties: dict[str, tuple[PropertySpec, ...]] = {
            t.name: config.properties_of(t.name) for t in self.tables
        }
        self._rows_of: dict[str, list[TableSpec]] = {}
        self._props_of: dict[str, list[tuple[TableSpec, PropertySpec]]] = {}
        self._hiders_of: dict[str, list[tuple[TableSpec, UnlessSpec]]] = {}
        self._revokers_of: dict[str, list[_Revoker]] = {}
        for table in self.tables:
            self._rows_of.setdefault(table.fact, []).append(table)
            for prop in self.properties[table.name]:
                self._props_of.setdefault(prop.fact, []).append((table, prop))
            for outer in table.unless:
                self._hiders_of.setdefault(outer.fact, []).append((table, outer))
                for inner in outer.unless:
                    self._revokers_of.setdefault(inner.fact, []).append(
                        _Revoker(table, outer, inner)
                    )
        self.types = (
            set(self._rows_of) | set(self._props_of) | set(self._hiders_of) | set(self._revokers_of)
        )
        """Fact types that can change a view; others only go to the archive."""

    def columns(self, table: str) -> list[str]:
        """The columns of logical ``table``: hash, declared columns, then per
        property the column and ``<column>_candidates``."""
        spec = self._table(table)
        out = ["hash", *(c.name for c in spec.columns)]
        for prop in self.properties[table]:
            out += [prop.column, prop.candidates_column]
        return out

    def column_kinds(self, table: str) -> list[tuple[str, Kind]]:
        """Each column of logical ``table`` with what it holds: ``key`` (the hash),
        ``pred`` (a predecessor's hash, or a JSON array of them), ``value`` (a
        value taken from fields) or ``candidates`` (a JSON array)."""
        spec = self._table(table)
        out: list[tuple[str, Kind]] = [("hash", "key")]
        out += [(c.name, _kind(c)) for c in spec.columns]
        for prop in self.properties[table]:
            out += [(prop.column, _kind(prop.value)), (prop.candidates_column, "candidates")]
        return out

    def _table(self, name: str) -> TableSpec:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    # -- phase 1: what to read ------------------------------------------------

    def relevant(self, facts: Iterable[Fact]) -> list[Fact]:
        types = self.types
        return [f for f in facts if f.type in types]

    def needs_bodies(self, facts: Sequence[Fact]) -> set[FactRef]:
        """Archived facts to read: the hiders that revokers in ``facts`` revoke."""
        here = {f.ref for f in facts}
        out: set[FactRef] = set()
        for fact in facts:
            for rev in self._revokers_of.get(fact.type, ()):
                for hider in refs_in(fact, rev.inner.role):
                    if hider.type == rev.outer.fact and hider not in here:
                        out.add(hider)
        return out

    def needs_state(
        self, facts: Sequence[Fact], bodies: Mapping[FactRef, Fact]
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[FactRef]]:
        """Keys to read: ``(table, entity)`` leaves, ``(table, row)`` hiders, and
        archived row facts (those a revocation may show again). Physical names."""
        here = {f.ref: f for f in facts}
        leaves: set[tuple[str, str]] = set()
        hiders: set[tuple[str, str]] = set()
        rows: set[FactRef] = set()
        for fact in facts:
            for table, prop in self._props_of.get(fact.type, ()):
                for entity in refs_in(fact, prop.entity):
                    if entity.type == table.fact and entity not in here:
                        leaves.add((self.names[table.name], entity.hash))
                        hiders.add((self.names[table.name], entity.hash))
            for table, outer in self._hiders_of.get(fact.type, ()):
                for row in refs_in(fact, outer.role):
                    if row.type == table.fact and row not in here:
                        hiders.add((self.names[table.name], row.hash))
            for rev in self._revokers_of.get(fact.type, ()):
                name = self.names[rev.table.name]
                for hider_ref in refs_in(fact, rev.inner.role):
                    hider = here.get(hider_ref) or bodies.get(hider_ref)
                    if hider is None or hider.type != rev.outer.fact:
                        continue
                    for row in refs_in(hider, rev.outer.role):
                        if row.type == rev.table.fact and row not in here:
                            hiders.add((name, row.hash))
                            leaves.add((name, row.hash))
                            rows.add(row)
        return leaves, hiders, rows

    # -- phase 2: compute -------------------------------------------------------

    def apply(self, facts: Sequence[Fact], state: State) -> Writes:
        """The net writes and changes of handling ``facts`` (causal order) on top
        of ``state`` (read for the keys the ``needs_*`` methods named)."""
        bodies = dict(state.bodies)
        leaves = {key: {c: dict(v) for c, v in cols.items()} for key, cols in state.leaves.items()}
        hiders = {key: set(v) for key, v in state.hiders.items()}
        initial_hiders = {key: frozenset(v) for key, v in hiders.items()}
        initial_leaves = {
            (key, col, leaf)
            for key, cols in state.leaves.items()
            for col, by_leaf in cols.items()
            for leaf in by_leaf
        }
        new_rows: dict[tuple[str, str], Fact] = {}  # (logical table, key) -> fact, in order
        touched_rows: dict[tuple[str, str], FactRef] = {}  # archived rows whose state may change
        prop_touched: set[tuple[str, str, str]] = set()  # (logical table, key, column)
        leaf_values: dict[tuple[str, str, str, str], str] = {}

        for fact in facts:
            bodies[fact.ref] = fact
            for table in self._rows_of.get(fact.type, ()):
                new_rows[(table.name, fact.hash)] = fact
            for table, prop in self._props_of.get(fact.type, ()):
                name = self.names[table.name]
                for entity in refs_in(fact, prop.entity):
                    if entity.type != table.fact:
                        continue
                    by_col = leaves.setdefault((name, entity.hash), {})
                    current = by_col.setdefault(prop.column, {})
                    value = source_value(fact, prop.value)
                    current[fact.hash] = value
                    leaf_values[(name, prop.column, entity.hash, fact.hash)] = to_json(value)
                    for prior in refs_in(fact, prop.prior):
                        if prior.type == prop.fact:
                            current.pop(prior.hash, None)
                    prop_touched.add((table.name, entity.hash, prop.column))
                    if (table.name, entity.hash) not in new_rows:
                        touched_rows[(table.name, entity.hash)] = entity
            for table, outer in self._hiders_of.get(fact.type, ()):
                name = self.names[table.name]
                for row in refs_in(fact, outer.role):
                    if row.type != table.fact:
                        continue
                    hiders.setdefault((name, row.hash), set()).add(fact.hash)
                    if (table.name, row.hash) not in new_rows:
                        touched_rows[(table.name, row.hash)] = row
            for rev in self._revokers_of.get(fact.type, ()):
                name = self.names[rev.table.name]
                for hider_ref in refs_in(fact, rev.inner.role):
                    hider = bodies.get(hider_ref)
                    if hider is None or hider.type != rev.outer.fact:
                        continue
                    for row in refs_in(hider, rev.outer.role):
                        if row.type != rev.table.fact:
                            continue
                        active = hiders.get((name, row.hash))
                        if active is not None:
                            active.discard(hider.hash)
                        if (rev.table.name, row.hash) not in new_rows:
                            touched_rows[(rev.table.name, row.hash)] = row

        writes = Writes()
        # Bookkeeping: net differences against what was read.
        final_leaves = {
            (key, col, leaf)
            for key, cols in leaves.items()
            for col, by_leaf in cols.items()
            for leaf in by_leaf
        }
        for key, col, leaf in sorted(final_leaves - initial_leaves):
            writes.leaves_added.append(
                (key[0], col, key[1], leaf, leaf_values[(key[0], col, key[1], leaf)])
            )
        for key, col, leaf in sorted(initial_leaves - final_leaves):
            writes.leaves_dropped.append((key[0], col, key[1], leaf))
        for key in sorted(hiders):
            before = initial_hiders.get(key, frozenset())
            after = hiders[key]
            writes.hiders_added.extend((key[0], key[1], h) for h in sorted(after - before))
            writes.hiders_dropped.extend((key[0], key[1], h) for h in sorted(before - after))

        def hidden(logical: str, row_key: str) -> bool:
            return bool(hiders.get((self.names[logical], row_key)))

        for (logical, row_key), fact in new_rows.items():
            if not hidden(logical, row_key):
                self._add_row(writes, logical, fact, leaves)
                writes.changes.append((logical, "added", row_key))
        for (logical, row_key), ref in touched_rows.items():
            name = self.names[logical]
            was_hidden = bool(initial_hiders.get((name, row_key)))
            now_hidden = hidden(logical, row_key)
            if was_hidden and now_hidden:
                continue
            if not was_hidden and now_hidden:
                writes.deleted.setdefault(name, []).append(row_key)
                writes.changes.append((logical, "removed", row_key))
            elif was_hidden:
                body = bodies.get(ref)
                if body is None:  # not archived: cannot happen for a handled predecessor
                    raise LookupError(f"{ref} is not in the sidecar's fact archive")
                self._add_row(writes, logical, body, leaves)
                writes.changes.append((logical, "added", row_key))
            else:
                changed = False
                for prop in self.properties[logical]:
                    if (logical, row_key, prop.column) in prop_touched:
                        value, candidates = _current(leaves, name, row_key, prop.column)
                        writes.updates.setdefault((name, prop.column), []).append(
                            (row_key, value, candidates)
                        )
                        changed = True
                if changed:
                    writes.changes.append((logical, "changed", row_key))
        return writes

    def _add_row(
        self,
        writes: Writes,
        table: str,
        fact: Fact,
        leaves: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    ) -> None:
        spec = self._table(table)
        name = self.names[table]
        row: dict[str, Any] = {"hash": fact.hash}
        for column in spec.columns:
            row[column.name] = source_value(fact, column)
        for prop in self.properties[table]:
            value, candidates = _current(leaves, name, fact.hash, prop.column)
            row[prop.column] = value
            row[prop.candidates_column] = candidates
        writes.rows.setdefault(name, []).append((fact.hash, row))


def _current(
    leaves: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    table: str,
    key: str,
    column: str,
) -> tuple[Any, list[Any]]:
    """The property's value (greatest-hash leaf) and every leaf's value, by hash."""
    by_leaf = leaves.get((table, key), {}).get(column, {})
    if not by_leaf:
        return None, []
    order = sorted(by_leaf)
    return by_leaf[order[-1]], [by_leaf[h] for h in order]
