"""The views' tables in the store's database: each table's stored definition
(compared on start to tell an additive change from an incompatible one), and
:func:`project`, which applies a batch of handled facts to the tables inside a
store transaction. Shared by :class:`~factbus.sidecar.views.Views` (live, from
the bus) and :mod:`factbus.sidecar.rebuild` (replayed from the archive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from factbus.errors import ConfigError
from factbus.fact import Fact
from factbus.sidecar.config import SidecarConfig
from factbus.sidecar.projection import Change, Projection, State, to_json
from factbus.sidecar.sql import ViewsDb

__all__ = ["compare_definitions", "definition_of", "project"]


def definition_of(config: SidecarConfig, table: str) -> str:
    """The stored definition of ``table`` (JSON), compared at start to detect changes."""
    spec = config.table(table)
    return to_json(
        {
            "fact": spec.fact,
            "columns": [[c.name, c.source] for c in spec.columns],
            "unless": [_unless(u) for u in spec.unless],
            "properties": [
                [p.column, p.fact, p.entity, p.value.source, p.prior]
                for p in config.properties_of(table)
            ],
        }
    )


def _unless(spec: Any) -> list[Any]:
    return [spec.fact, spec.role, [_unless(u) for u in spec.unless]]


def compare_definitions(table: str, old: str, new: str) -> bool:
    """``True`` when ``new`` only adds columns or properties to ``old`` (applied
    by rebuilding the table from the archive).

    :raises ConfigError: an incompatible change, naming it and ``factbus sidecar rebuild``.
    """
    before, after = orjson.loads(old), orjson.loads(new)
    problems: list[str] = []
    if before["fact"] != after["fact"]:
        problems.append(f"fact changed from {before['fact']!r} to {after['fact']!r}")
    if before["unless"] != after["unless"]:
        problems.append("unless changed")
    new_columns = dict(after["columns"])
    for name, source in before["columns"]:
        if name not in new_columns:
            problems.append(f"column {name!r} was removed")
        elif new_columns[name] != source:
            problems.append(f"column {name!r} changed from {source!r} to {new_columns[name]!r}")
    new_properties = {p[0]: p for p in after["properties"]}
    for prop in before["properties"]:
        if prop[0] not in new_properties:
            problems.append(f"property column {prop[0]!r} was removed")
        elif new_properties[prop[0]] != prop:
            problems.append(f"property {prop[0]!r} changed")
    if problems:
        raise ConfigError(
            f"sidecar table {table!r}: {'; '.join(problems)}. This cannot be applied in place: "
            f"run `factbus sidecar rebuild --config <file> {table}` to rebuild it from the "
            "facts the sidecar keeps"
        )
    return True


async def project(
    db: ViewsDb,
    conn: Any,
    projection: Projection,
    facts: Sequence[Fact],
    *,
    archive: bool,
    read_back: bool = False,
) -> list[Change]:
    """Apply ``facts`` (causal order, each new) on ``conn`` inside its transaction:
    append them to the archive (if ``archive``) and write their view changes.

    Returns the changes; with ``read_back`` their rows are read in the same
    transaction (otherwise ``row`` is ``None``).
    """
    if archive and facts:
        await db.archive(conn, facts)
    relevant = projection.relevant(facts)
    if not relevant:
        return []
    state = State()
    wanted = projection.needs_bodies(relevant)
    if wanted:
        state.bodies.update(await db.load_bodies(conn, wanted))
    leaves, hiders, rows = projection.needs_state(relevant, state.bodies)
    rows -= state.bodies.keys()
    if rows:
        state.bodies.update(await db.load_bodies(conn, rows))
    if leaves or hiders:
        await db.load_state(conn, state, leaves, hiders)
    writes = projection.apply(relevant, state)
    kinds = {projection.names[t.name]: projection.column_kinds(t.name) for t in projection.tables}
    if writes:
        await db.write(conn, kinds, writes)
    if not writes.changes:
        return []
    rows_by_table: dict[str, dict[str, dict[str, Any]]] = {}
    if read_back:
        wanted_rows: dict[str, set[str]] = {}
        for table, op, key in writes.changes:
            if op != "removed":
                wanted_rows.setdefault(table, set()).add(key)
        for table, keys in wanted_rows.items():
            rows_by_table[table] = await db.read_rows(
                conn, projection.names[table], projection.column_kinds(table), keys
            )
    return [
        Change(table, op, key, rows_by_table.get(table, {}).get(key) if op != "removed" else None)
        for table, op, key in writes.changes
    ]
