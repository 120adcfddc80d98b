"""The sidecar's views: the declared tables, kept in the store's database.

``views = Views(config)``; ``views.attach(bus)`` before ``bus.start()``;
``await views.open()`` before the bus handles anything (it creates missing
tables, applies additive changes and refuses incompatible ones); then the app
reads the tables with SQL, or through :meth:`Views.rows`, and listens to
:class:`Change` notifications.

How a fact reaches the tables: :meth:`Views.attach` registers one catch-all
handler (``"*"``) that only collects the facts of the step; a before-commit
hook of the step's store transaction (:func:`factbus.dispatcher.current_transaction`)
then appends them to the fact archive and applies their view changes with a
few set-wise statements (:func:`factbus.sidecar.tables.project`:
:mod:`factbus.sidecar.projection` decides, :mod:`factbus.sidecar.sql`
writes). Everything commits with the facts' handled marks or not at all.
Listeners hear of a change only after that commit. The catch-all must be the
bus's last handler: a fact whose own handler failed (dead-lettered) is never
collected, as catch-alls run after the type's handlers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from factbus.errors import ConfigError, FactbusError
from factbus.fact import Fact
from factbus.sidecar.collect import TransactionCollector
from factbus.sidecar.config import SidecarConfig, TableSpec
from factbus.sidecar.projection import Change, Kind, Projection
from factbus.sidecar.rebuild import replace_tables
from factbus.sidecar.sql import ViewsDb, open_views_db
from factbus.sidecar.tables import compare_definitions, definition_of, project
from factbus.urls import redact

if TYPE_CHECKING:
    from factbus.bus import Bus
    from factbus.store.base import StoreTransaction

__all__ = ["Change", "UnknownTable", "Views"]

log = structlog.get_logger("factbus.sidecar")


class UnknownTable(FactbusError, KeyError):
    """A table name that is not one of the sidecar's views."""

    def __init__(self, table: str, known: Sequence[str]) -> None:
        super().__init__(f"no table {table!r} (tables: {', '.join(known) or 'none'})")
        self.table = table

    def __str__(self) -> str:
        return str(self.args[0])


class Views:
    """The tables of ``config`` in the database of its ``[factbus] store`` (see the
    module docstring). ``store_url`` overrides that store."""

    def __init__(self, config: SidecarConfig, *, store_url: str | None = None) -> None:
        self.config = config
        self.store_url = store_url or config.settings().store_url
        self.projection = Projection(config)
        self.db: ViewsDb = open_views_db(self.store_url)
        self.table_names: tuple[str, ...] = tuple(t.name for t in config.tables)
        self._kinds: dict[str, list[tuple[str, Kind]]] = {
            name: self.projection.column_kinds(name) for name in self.table_names
        }
        self._listeners: list[Callable[[Change], None]] = []
        self._collector = TransactionCollector(self._flush)
        self._opened = False
        self._archive = True
        self._tuned: Any = None

    # -- schema ---------------------------------------------------------------

    def columns(self, table: str) -> list[str]:
        """The columns of ``table``, ``hash`` first. :raises UnknownTable:"""
        return [name for name, _ in self._kinds_of(table)]

    def _kinds_of(self, table: str) -> list[tuple[str, Kind]]:
        kinds = self._kinds.get(table)
        if kinds is None:
            raise UnknownTable(table, self.table_names)
        return kinds

    async def open(self) -> None:
        """Connect (for reads), create the bookkeeping and every missing table, and
        apply additive changes (a new column or property: that table is rebuilt
        from the archive). Idempotent.

        :raises ConfigError: an incompatible change to a table's definition (the
            message names ``factbus sidecar rebuild``), or a table of that name
            that the sidecar did not create.
        """
        if self._opened:
            return
        db = self.db
        await db.open()
        async with db.transaction() as conn:
            await db.create_bookkeeping(conn)
            known = await db.definitions(conn)
            to_build: list[str] = []
            for table in self.config.tables:
                definition = definition_of(self.config, table.name)
                old = known.get(table.name)
                columns = await db.table_columns(conn, table.name)
                if old is None:
                    if columns is not None:
                        raise ConfigError(
                            f"sidecar table {table.name!r}: a table of that name exists and "
                            "was not made by the sidecar; rename one of them"
                        )
                    to_build.append(table.name)
                elif columns is None or (
                    old != definition and compare_definitions(table.name, old, definition)
                ):
                    to_build.append(table.name)
        if to_build:
            log.info("building sidecar tables from the archive", tables=to_build)
            await replace_tables(db, self.config, to_build)
        self._opened = True

    async def aclose(self) -> None:
        """Close the read connection(s). Idempotent."""
        self._opened = False
        await self.db.aclose()

    # -- writing (through the bus) ---------------------------------------------

    def attach(self, bus: Bus) -> None:
        """Register the catch-all handler on ``bus`` (before ``bus.start()``; the
        bus's store must be this database). It also fills the fact archive, so
        a :class:`~factbus.sidecar.archive.FactArchive` on the same store
        needs no ``attach`` of its own (if one was attached first, it archives
        and the views do not)."""
        if bus.settings.store_url != self.store_url:
            raise ConfigError(
                f"the bus's store ({redact(bus.settings.store_url)}) is not the views' database "
                f"({redact(self.store_url)}): views commit with the handled marks, "
                "so they must share it"
            )
        from factbus.sidecar.archive import claim_archive_writer

        self._archive = claim_archive_writer(bus, self)
        bus.handler("*")(self._collector.collect)

    async def _flush(self, tx: StoreTransaction, batch: list[Fact]) -> None:
        if not self._opened:
            raise RuntimeError("await views.open() before the bus handles facts")
        if self._tuned is not tx.connection:
            self._tuned = tx.connection
            await self.db.tune_writer(tx.connection)
        changes = await project(
            self.db,
            tx.connection,
            self.projection,
            batch,
            archive=self._archive,
            read_back=bool(self._listeners),
        )
        if changes and self._listeners:
            tx.after_commit(functools.partial(self._notify, changes))

    # -- reading ------------------------------------------------------------------

    async def rows(
        self, table: str, *, limit: int = 100, after: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` rows of ``table`` with ``hash > after``, ordered by hash
        (byte order). Values: see :mod:`factbus.sidecar.sql` (candidates decoded).

        :raises UnknownTable: ``table`` is not a view. :raises ValueError: ``limit`` < 1.
        """
        kinds = self._kinds_of(table)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if not self._opened:
            await self.open()
        async with self.db.reader() as conn:
            return await self.db.page_rows(conn, table, kinds, limit, after)

    async def row(self, table: str, key: str) -> dict[str, Any] | None:
        """The row of ``table`` whose hash is ``key``, or ``None``. :raises UnknownTable:"""
        kinds = self._kinds_of(table)
        if not self._opened:
            await self.open()
        async with self.db.reader() as conn:
            return (await self.db.read_rows(conn, table, kinds, [key])).get(key)

    def listen(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` for every row change, after its commit, on the
        event loop (keep it quick: queue the change). Returns an unsubscribe
        function."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, changes: list[Change]) -> None:
        for change in changes:
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:
                    log.exception("view listener failed", table=change.table)

    def spec(self, table: str) -> TableSpec:
        """The declaration of ``table``. :raises UnknownTable:"""
        self._kinds_of(table)
        return self.config.table(table)
