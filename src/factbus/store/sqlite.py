"""``sqlite:///path.db``: the embedded default store (one file per node, WAL mode).

Calls run on the event-loop thread: each pipeline step makes a handful of
batched statements that take microseconds, and a thread hop per step would cost
more than it saves. ``synchronous=NORMAL`` in WAL mode survives a process
crash (``kill -9``); only a power loss can drop the last commits.

``sqlite:///:memory:`` gives a private in-memory database (tests). Option
``?keep_bodies=1`` keeps handled facts' content for :meth:`SqliteStore.load`;
any other option is refused (:class:`~factbus.errors.ConfigError`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from factbus.errors import ConfigError
from factbus.fact import Fact, FactRef
from factbus.store.base import (
    CommitHooks,
    FactState,
    ParkedFact,
    StoreBatch,
    check_owner,
    fact_from_bytes,
    fact_to_bytes,
)
from factbus.urls import parse_bool, query_options, redact

SCHEMA_VERSION: Final = 1
_CHUNK: Final = 500  # hashes per IN (...) query; SQLite allows 32766 parameters
_STATES: Final = {1: FactState.HANDLED, 2: FactState.PARKED}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS factbus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS factbus_facts (
    hash TEXT NOT NULL, type TEXT NOT NULL,
    state INTEGER NOT NULL,          -- 1 handled, 2 parked
    seq INTEGER NOT NULL,            -- arrival order, for listing parked facts
    body BLOB,                       -- parked facts; handled ones only with keep_bodies
    PRIMARY KEY (hash, type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS factbus_facts_parked ON factbus_facts (state, seq);
CREATE TABLE IF NOT EXISTS factbus_waiting (
    missing_hash TEXT NOT NULL, missing_type TEXT NOT NULL,
    hash TEXT NOT NULL, type TEXT NOT NULL,
    PRIMARY KEY (missing_hash, missing_type, hash, type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS factbus_waiting_by_fact ON factbus_waiting (hash, type);
CREATE TABLE IF NOT EXISTS factbus_published (
    hash TEXT NOT NULL, type TEXT NOT NULL, PRIMARY KEY (hash, type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS factbus_positions (key TEXT PRIMARY KEY, next INTEGER NOT NULL);
"""


def sqlite_path(url: str) -> str:
    """The file path in ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"SqliteStore needs a sqlite:/// URL, not {parts.scheme}://")
    if parts.netloc:
        raise ConfigError(f"{redact(url)!r}: use sqlite:///relative.db or sqlite:////absolute.db")
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigError(f"{redact(url)!r} names no database file")
    return path


def _chunks(refs: Iterable[FactRef]) -> Iterator[list[FactRef]]:
    chunk: list[FactRef] = []
    for ref in refs:
        chunk.append(ref)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _in_hashes(column: str, count: int) -> str:
    # Hashes are all but unique, so the look-up goes by hash through the primary
    # key and the type is checked in Python: a row-value IN (VALUES ...) over
    # (hash, type) pairs makes SQLite scan instead.
    return f"{column} IN ({','.join('?' * count)})"


def _hashes(refs: list[FactRef]) -> list[str]:
    return [ref.hash for ref in refs]


class SqliteTransaction(CommitHooks):
    """A ``BEGIN IMMEDIATE`` transaction on the store's connection."""

    def __init__(self, store: SqliteStore, db: sqlite3.Connection) -> None:
        super().__init__()
        self._store = store
        self._db = db
        self._savepoints = 0

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"factbus_sp{self._savepoints}"
        self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._db.execute(f"ROLLBACK TO {name}")
            self._db.execute(f"RELEASE {name}")
            raise
        self._db.execute(f"RELEASE {name}")

    async def claim(self, refs: Sequence[FactRef]) -> set[FactRef]:
        return set(refs)  # one node per store: nothing to contend with

    async def record(self, batch: StoreBatch) -> None:
        self._store._apply(self._db, batch)


class SqliteStore:
    """SQLite store; see the module docstring for its threading and durability."""

    shared: Final = False
    """One node per file: see :attr:`factbus.store.Store.shared`."""

    def __init__(self, url: str = "sqlite:///factbus.db") -> None:
        self.url = url
        self.path = sqlite_path(url)
        options = query_options(url, ("keep_bodies",), what="sqlite store")
        self.keep_bodies = parse_bool("keep_bodies", options.get("keep_bodies", "0"))
        """Keep handled facts' content (for :meth:`load`); off by default: dedup
        needs only identities, and bodies triple the bytes written per fact."""
        self._db: sqlite3.Connection | None = None
        self._seq = 0
        self._waiting_rows = 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        version = db.execute("SELECT value FROM factbus_meta WHERE key='schema'").fetchone()
        if version is None:
            db.execute("INSERT INTO factbus_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(version[0]) != SCHEMA_VERSION:
            raise ConfigError(f"{self.path}: schema {version[0]} is not {SCHEMA_VERSION}")
        self._seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM factbus_facts").fetchone()[0]
        self._db = db
        self._count_waiting()

    async def own(self, owner: str) -> None:
        """See :meth:`factbus.store.Store.own` (kept in ``factbus_meta``)."""
        db = self.db
        db.execute("INSERT OR IGNORE INTO factbus_meta VALUES ('owner', ?)", (owner,))
        recorded = db.execute("SELECT value FROM factbus_meta WHERE key='owner'").fetchone()[0]
        check_owner(self.path, recorded, owner)

    def _count_waiting(self) -> None:
        self._waiting_rows = self.db.execute("SELECT COUNT(*) FROM factbus_waiting").fetchone()[0]

    async def aclose(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def states(self, refs: Collection[FactRef]) -> dict[FactRef, FactState]:
        out: dict[FactRef, FactState] = {}
        wanted = refs if isinstance(refs, set | frozenset | dict) else set(refs)
        for chunk in _chunks(wanted):
            rows = self.db.execute(
                "SELECT hash, type, state FROM factbus_facts WHERE "
                + _in_hashes("hash", len(chunk)),
                _hashes(chunk),
            )
            for fact_hash, fact_type, state in rows:
                ref = FactRef(fact_type, fact_hash)
                if ref in wanted:
                    out[ref] = _STATES[state]
        return out

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        tx = SqliteTransaction(self, db)
        try:
            yield tx
            await tx.run_before_commit()
        except BaseException:
            db.execute("ROLLBACK")
            self._count_waiting()  # the counter may have moved with the undone writes
            raise
        db.execute("COMMIT")
        tx.run_after_commit()

    def _apply(self, db: sqlite3.Connection, batch: StoreBatch) -> None:
        if batch.parked:
            rows = []
            for parked in batch.parked:
                self._seq += 1
                ref = parked.fact.ref
                rows.append((ref.hash, ref.type, self._seq, fact_to_bytes(parked.fact)))
            db.executemany(
                "INSERT INTO factbus_facts (hash, type, state, seq, body) VALUES (?, ?, 2, ?, ?) "
                "ON CONFLICT (hash, type) DO NOTHING",
                rows,
            )
            added = db.executemany(
                "INSERT OR IGNORE INTO factbus_waiting VALUES (?, ?, ?, ?)",
                [
                    (missing.hash, missing.type, p.fact.hash, p.fact.type)
                    for p in batch.parked
                    for missing in p.missing
                ],
            )
            self._waiting_rows += max(added.rowcount, 0)
        if batch.handled:
            keep = self.keep_bodies
            db.executemany(
                "INSERT INTO factbus_facts (hash, type, state, seq, body) VALUES (?, ?, 1, 0, ?) "
                "ON CONFLICT (hash, type) DO UPDATE SET state = 1, body = excluded.body",
                [(f.hash, f.type, fact_to_bytes(f) if keep else None) for f in batch.handled],
            )
            if self._waiting_rows > 0:  # nothing waits: no wait list to trim
                keys = [(fact.hash, fact.type) for fact in batch.handled]
                released = db.executemany(
                    "DELETE FROM factbus_waiting WHERE missing_hash = ? AND missing_type = ?", keys
                )
                unparked = db.executemany(
                    "DELETE FROM factbus_waiting WHERE hash = ? AND type = ?", keys
                )
                self._waiting_rows -= max(released.rowcount, 0) + max(unparked.rowcount, 0)
        if batch.published:
            db.executemany(
                "INSERT OR IGNORE INTO factbus_published VALUES (?, ?)",
                [(ref.hash, ref.type) for ref in batch.published],
            )
        if batch.positions:
            db.executemany(
                "INSERT INTO factbus_positions VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET next = excluded.next",
                list(batch.positions.items()),
            )

    async def waiting_on(
        self, refs: Collection[FactRef], limit: int | None = None
    ) -> list[ParkedFact]:
        waiters: list[FactRef] = []
        seen: set[FactRef] = set()
        wanted = set(refs)
        for chunk in _chunks(wanted):
            rows = self.db.execute(
                "SELECT missing_hash, missing_type, hash, type FROM factbus_waiting WHERE "
                + _in_hashes("missing_hash", len(chunk)),
                _hashes(chunk),
            )
            try:
                for missing_hash, missing_type, fact_hash, fact_type in rows:
                    if FactRef(missing_type, missing_hash) not in wanted:
                        continue
                    ref = FactRef(fact_type, fact_hash)
                    if ref not in seen:
                        seen.add(ref)
                        waiters.append(ref)
                        if limit is not None and len(waiters) >= limit:
                            return self._parked_facts(waiters)
            finally:
                rows.close()  # a cursor left open would hold its read snapshot
        return self._parked_facts(waiters)

    def _parked_facts(self, refs: list[FactRef]) -> list[ParkedFact]:
        bodies: dict[FactRef, bytes] = {}
        missing: dict[FactRef, set[FactRef]] = {ref: set() for ref in refs}
        for chunk in _chunks(refs):
            hashes = _hashes(chunk)
            # "+state" keeps SQLite on the primary key (hash) instead of scanning every
            # parked row through the state index, which made release quadratic.
            for fact_hash, fact_type, body in self.db.execute(
                "SELECT hash, type, body FROM factbus_facts WHERE +state = 2 AND "
                + _in_hashes("hash", len(chunk)),
                hashes,
            ):
                bodies[FactRef(fact_type, fact_hash)] = body
            for m_hash, m_type, fact_hash, fact_type in self.db.execute(
                "SELECT missing_hash, missing_type, hash, type FROM factbus_waiting WHERE "
                + _in_hashes("hash", len(chunk)),
                hashes,
            ):
                waiter = missing.get(FactRef(fact_type, fact_hash))
                if waiter is not None:
                    waiter.add(FactRef(m_type, m_hash))
        return [
            ParkedFact(fact_from_bytes(bodies[ref]), frozenset(missing[ref]))
            for ref in refs
            if ref in bodies
        ]

    async def ready_parked(self, limit: int | None = None) -> list[Fact]:
        rows = self.db.execute(
            "SELECT body FROM factbus_facts f WHERE state = 2 AND NOT EXISTS "
            "(SELECT 1 FROM factbus_waiting w WHERE w.hash = f.hash AND w.type = f.type) "
            "ORDER BY seq LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [fact_from_bytes(body) for (body,) in rows]

    async def parked(self, limit: int = 1000) -> list[ParkedFact]:
        rows = self.db.execute(
            "SELECT hash, type FROM factbus_facts WHERE state = 2 ORDER BY seq LIMIT ?", (limit,)
        )
        return self._parked_facts([FactRef(t, h) for h, t in rows])

    async def counts(self) -> dict[str, int]:
        db = self.db
        by_state = dict(db.execute("SELECT state, COUNT(*) FROM factbus_facts GROUP BY state"))
        published = db.execute("SELECT COUNT(*) FROM factbus_published").fetchone()[0]
        return {
            "handled": by_state.get(1, 0),
            "parked": by_state.get(2, 0),
            "published": published,
        }

    async def published(self, refs: Collection[FactRef]) -> set[FactRef]:
        out: set[FactRef] = set()
        wanted = set(refs)
        for chunk in _chunks(wanted):
            rows = self.db.execute(
                "SELECT hash, type FROM factbus_published WHERE " + _in_hashes("hash", len(chunk)),
                _hashes(chunk),
            )
            out.update(ref for h, t in rows if (ref := FactRef(t, h)) in wanted)
        return out

    async def position(self, key: str) -> int | None:
        row = self.db.execute("SELECT next FROM factbus_positions WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    async def load(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        out: dict[FactRef, Fact] = {}
        wanted = set(refs)
        for chunk in _chunks(wanted):
            rows = self.db.execute(
                "SELECT hash, type, body FROM factbus_facts WHERE "
                + _in_hashes("hash", len(chunk)),
                _hashes(chunk),
            )
            for fact_hash, fact_type, body in rows:
                if FactRef(fact_type, fact_hash) in wanted:
                    fact = fact_from_bytes(body)
                    out[fact.ref] = fact
        return out

    def __repr__(self) -> str:
        return f"SqliteStore({redact(self.url)!r})"
