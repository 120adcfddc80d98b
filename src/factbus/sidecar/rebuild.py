"""Rebuild views from the fact archive into fresh tables that replace the old ones.

:func:`rebuild` (``factbus sidecar rebuild --config F [TABLE]``) replays the
archive in ``seq`` order (a causal order) into ``<table>__new`` tables, in
transactions of a few thousand facts, while the old tables stay readable (and
a running sidecar keeps writing to them). A last transaction locks the archive
against writers, replays what arrived meanwhile, drops each old table and
renames the new one in its place, and records the new definitions: readers see
the old table or the new one, never a half-built one.

Because a view is a function of the set of facts, the rebuilt table equals
what the running sidecar computed, for the same configuration; with a changed
configuration, restart the sidecar with it after the rebuild.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from factbus.errors import ConfigError
from factbus.sidecar.config import SidecarConfig
from factbus.sidecar.projection import Projection
from factbus.sidecar.sql import ViewsDb, open_views_db
from factbus.sidecar.tables import definition_of, project

__all__ = ["RebuildResult", "rebuild", "replace_tables"]

log = structlog.get_logger("factbus.sidecar.rebuild")

NEW_SUFFIX = "__new"
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What a rebuild did: ``facts`` replayed from the archive, and the ``rows``
    of each rebuilt table (by table name, in the order asked)."""

    facts: int
    rows: dict[str, int]


async def rebuild(
    config: SidecarConfig,
    tables: Sequence[str] | None = None,
    *,
    store_url: str | None = None,
    chunk: int = CHUNK,
) -> RebuildResult:
    """Rebuild ``tables`` (default: every table of ``config``) from the archive in
    the store of ``config`` (or ``store_url``), ``chunk`` facts per transaction.

    :raises ConfigError: an unknown table name, or a store that is not SQL.
    """
    names = list(tables) if tables else [t.name for t in config.tables]
    known = {t.name for t in config.tables}
    for name in names:
        if name not in known:
            raise ConfigError(
                f"no [[sidecar.table]] is named {name!r} (tables: {', '.join(sorted(known))})"
            )
    db = open_views_db(store_url or config.settings().store_url)
    await db.open()
    try:
        return await replace_tables(db, config, names, chunk)
    finally:
        await db.aclose()


async def replace_tables(
    db: ViewsDb, config: SidecarConfig, names: Sequence[str], chunk: int = CHUNK
) -> RebuildResult:
    """Build ``names`` from the archive into new tables and swap them in (see the
    module docstring). ``db`` must be open."""
    new = {name: name + NEW_SUFFIX for name in names}
    projection = Projection(config, only=names, names=new)
    async with db.transaction() as conn:
        await db.create_bookkeeping(conn)
        for name in names:
            await db.drop_table(conn, new[name])
            await db.create_table(conn, new[name], projection.column_kinds(name))
    cursor, replayed = 0, 0
    while True:
        async with db.transaction() as conn:
            page = await db.archive_page(conn, cursor, chunk)
            if page:
                await project(db, conn, projection, [f for _, f in page], archive=False)
                cursor, replayed = page[-1][0], replayed + len(page)
        if len(page) < chunk:
            break
        await asyncio.sleep(0)  # let readers (the sidecar's HTTP API) in between chunks
    counts: dict[str, int] = {}
    async with db.transaction() as conn:
        await db.lock_archive(conn)
        while page := await db.archive_page(conn, cursor, chunk):
            await project(db, conn, projection, [f for _, f in page], archive=False)
            cursor, replayed = page[-1][0], replayed + len(page)
        for name in names:
            await db.swap_table(conn, new[name], name)
            await db.set_definition(conn, name, definition_of(config, name))
    async with db.reader() as conn:
        for name in names:
            rows = await db.page_rows(conn, name, [("hash", "key")], 1 << 62, None)
            counts[name] = len(rows)
    log.info("sidecar tables rebuilt", tables=list(names), facts=replayed)
    return RebuildResult(facts=replayed, rows=counts)
