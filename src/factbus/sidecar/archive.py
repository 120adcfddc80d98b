"""The sidecar's fact archive: every fact it handled, with a causal ``seq``.

Facts are appended in the same store transaction as their handled marks (by
:meth:`factbus.sidecar.views.Views.attach`, or :meth:`FactArchive.attach` for a
sidecar without views; attaching both is harmless: appends are idempotent).
The pipeline hands facts over in causal order and one node writes its archive,
so ``seq`` order is a topological order (predecessors first) and a cursor
``seq`` is stable: a later fact always gets a greater one. The archive also
keeps an edge index (predecessor, role, successor) for successor queries;
:meth:`FactArchive.closure` walks predecessors one generation per query.

Reads use connections of the archive's own (an SQLite WAL reader, an asyncpg
pool): they are safe from HTTP handlers while the bus writes, and see only
committed facts.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING

from factbus.bus import Bus
from factbus.fact import Fact, FactRef
from factbus.lifecycle import AsyncLifecycle
from factbus.sidecar.collect import TransactionCollector
from factbus.sidecar.sql import ViewsDb, open_views_db

if TYPE_CHECKING:
    from factbus.store.base import StoreTransaction

__all__ = ["FactArchive"]

_WRITERS: weakref.WeakKeyDictionary[Bus, object] = weakref.WeakKeyDictionary()


def claim_archive_writer(bus: Bus, writer: object) -> bool:
    """Make ``writer`` the one that archives what ``bus`` handles; ``False`` when
    another already does (then ``writer`` must not append)."""
    if bus in _WRITERS:
        return False
    _WRITERS[bus] = writer
    return True


class FactArchive(AsyncLifecycle):
    """The archive in the database of ``store_url`` (``sqlite:///`` or ``postgresql://``).

    :raises ConfigError: another kind of store URL.
    """

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.db: ViewsDb = open_views_db(store_url)
        self._opened = False
        self._collector = TransactionCollector(self._flush)

    async def open(self) -> None:
        """Connect and create the archive's tables if missing. Idempotent."""
        if self._opened:
            return
        await self.db.open()
        async with self.db.transaction() as conn:
            await self.db.create_bookkeeping(conn)
        self._opened = True

    async def aclose(self) -> None:
        """Close the read connection(s). Idempotent."""
        self._opened = False
        await self.db.aclose()

    async def _enter(self) -> None:
        await self.open()

    def attach(self, bus: Bus) -> None:
        """Append every fact ``bus`` handles, in its handled-mark transaction
        (register before ``bus.start()``; the bus's store must be ``store_url``).
        Does nothing if :class:`~factbus.sidecar.views.Views` (or another
        archive) already archives for ``bus``."""
        if claim_archive_writer(bus, self):
            bus.handler("*")(self._collector.collect)

    async def _flush(self, tx: StoreTransaction, batch: list[Fact]) -> None:
        await self.db.archive(tx.connection, batch)

    # -- reads --------------------------------------------------------------------

    async def get(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        """The archived facts among ``refs`` (unknown ones are absent)."""
        if not refs:
            return {}
        await self.open()
        async with self.db.reader() as conn:
            return await self.db.load_bodies(conn, refs)

    async def closure(self, refs: Collection[FactRef]) -> list[Fact]:
        """``refs`` and all their archived ancestors, each once, predecessors first."""
        if not refs:
            return []
        await self.open()
        async with self.db.reader() as conn:
            return await self.db.closure(conn, refs)

    async def page(self, after: int, limit: int) -> tuple[list[Fact], int]:
        """Up to ``limit`` facts with ``seq > after`` in ``seq`` order, and the cursor
        to continue from (``after`` itself when there is nothing new).

        :raises ValueError: ``limit`` < 1 or ``after`` < 0.
        """
        if limit < 1 or after < 0:
            raise ValueError(f"need limit >= 1 and after >= 0, not limit={limit}, after={after}")
        await self.open()
        async with self.db.reader() as conn:
            rows = await self.db.archive_page(conn, after, limit)
        return [fact for _, fact in rows], (rows[-1][0] if rows else after)

    async def successors(self, ref: FactRef, role: str, fact_type: str) -> list[FactRef]:
        """Archived facts of ``fact_type`` naming ``ref`` in ``role``, in ``seq`` order."""
        await self.open()
        async with self.db.reader() as conn:
            return await self.db.successors(conn, ref, role, fact_type)

    async def count(self) -> int:
        """How many facts the archive holds."""
        await self.open()
        async with self.db.reader() as conn:
            return await self.db.archive_count(conn)
