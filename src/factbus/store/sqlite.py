"""``sqlite:///path.db``: the embedded default store (one file per node, WAL mode).

Layout (schema 2, docs/decisions.md "SQLite store: a fact log"): handled facts
are appended to ``factbus_log`` (a rowid table, written once, never updated),
so recording a step appends to the end of one B-tree whatever the store's
size. Which identities are handled is known from an index kept in memory
(``hash(fact_hash)``, Python's cached 64-bit string hash, -> log row, about 100
bytes per handled fact), rebuilt from the log on :meth:`SqliteStore.open`; a hit
is confirmed against the log row. Parked
facts live in the small ``factbus_parked`` table (with their wait lists) until
handled, then move to the log. ``factbus_facts`` is a read-only view with
schema 1's columns. A schema 1 file is migrated on open.

Another connection (another process, or the sidecar's) may write the file: the
store notices it by ``PRAGMA data_version`` at each transaction and look-up,
and indexes the log rows appended meanwhile.

Threads: a transaction's statements, its COMMIT included, run on the
event-loop thread (handlers write through the same connection, between
awaits); each pipeline step makes a handful of batched statements, and its
COMMIT appends a few pages to the WAL (~0.1 ms, no fsync). What syncs the disk
runs in threads (docs/decisions.md, "SQLite store: no fsync on the event
loop"). WAL checkpoints, which SQLite would otherwise run inside every thousand
pages' COMMIT (tens of ms), run in a worker thread on a connection of their own
every :data:`CHECKPOINT_EVERY` commits; past :data:`WAL_BOUND` frames they copy
the WAL completely, syncing the database file there. The COMMIT that then
restarts the WAL (SQLite syncs the WAL's new header in it), the checkpoint the
store finishes itself when the worker's could not copy everything and, with
``?commit_thread=1``, every COMMIT run in the store's writer thread (a step's
deliveries are still acked only once its COMMIT returned). Every call that
uses the connection first waits until the writer thread is done with it, so
the connection is never used from two threads at once (docs/decisions.md,
"SQLite store: the COMMIT's thread"). ``synchronous=NORMAL`` in WAL mode
survives a process crash (``kill -9``); only a power loss can drop the last
commits.

``sqlite:///:memory:`` gives a private in-memory database (tests). Option
``?keep_bodies=1`` keeps handled facts' content for :meth:`SqliteStore.load`;
``?commit_thread=1`` runs each COMMIT in the store's writer thread instead of
the event-loop thread (see :attr:`SqliteStore.commit_thread`); any other
option is refused (:class:`~factbus.errors.ConfigError`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from itertools import chain, tee
from operator import itemgetter
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import structlog

from factbus.errors import ConfigError
from factbus.fact import Fact, FactRef, ref_of
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

log = structlog.get_logger("factbus.store.sqlite")

SCHEMA_VERSION: Final = 2
"""1: one ``factbus_facts`` table keyed by (hash, type); 2: the fact log (below)."""
_CHUNK: Final = 500  # values per IN (...) query; SQLite allows 32766 parameters
CHECKPOINT_EVERY: Final = 64
"""Commits between two WAL checkpoints. They run in a worker thread on a connection
of their own (``PRAGMA wal_checkpoint(PASSIVE)``); the store's connection does not
checkpoint (``wal_autocheckpoint=0``), so no step's COMMIT waits for one."""
WAL_BOUND: Final = 2000
"""WAL frames (pages) past which the WAL is restarted. SQLite restarts it (the next
write starts again at its beginning) only once every frame is copied into the
database file and that file synced, which a checkpoint does only when nothing
was committed while it copied. Past the bound the worker's checkpoint copies
again what was committed during its previous pass, up to
:data:`CHECKPOINT_PASSES` passes, each shorter than the last, until one copies
everything (the database file's fsync, of every page copied since the last
one, then runs in the worker). Should none, right after a commit the store
copies the few frames committed meanwhile itself (in the writer thread, on its
own connection, before its next transaction)."""
CHECKPOINT_PASSES: Final = 8
"""PASSIVE checkpoints the worker runs at most, past :data:`WAL_BOUND` (one below
it: a pass that copied everything syncs the database file, and the WAL restarts
at the next write). Each pass after the first begins right after a COMMIT (or
after :data:`COMMIT_WAIT` without one), so that it has the whole gap until the
next COMMIT to copy in."""
COMMIT_WAIT: Final = 0.05
"""Seconds a checkpoint pass waits for a COMMIT to begin after."""
_key: Final = hash
"""The in-memory index's key of a fact hash: Python's 64-bit hash of the string,
which the string caches (the pipeline's sets and dicts of refs computed it
already), so a key costs no slice, no new string and no hashing, and keeps 36
bytes per handled fact instead of a 22-character prefix's 71. Per process
(``PYTHONHASHSEED``): the index lives in memory and is rebuilt on open. A hit is
confirmed against the log row, so two facts sharing a key are never merged."""

_TABLES = """
CREATE TABLE IF NOT EXISTS factbus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS factbus_log (
    id INTEGER PRIMARY KEY,          -- append order: rows are never updated or deleted
    hash TEXT NOT NULL, type TEXT NOT NULL,
    body BLOB                        -- only with keep_bodies
);
CREATE TABLE IF NOT EXISTS factbus_parked (
    seq INTEGER PRIMARY KEY,         -- parking order
    hash TEXT NOT NULL, type TEXT NOT NULL, body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS factbus_parked_identity ON factbus_parked (hash, type);
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

# Schema 1 as factbus wrote it before the fact log: what the migration reads from
# (and what its test and benchmarks/studies/sqlite_variants.py start from). Frozen.
SCHEMA_1 = """
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


_VIEW = """
CREATE VIEW IF NOT EXISTS factbus_facts (hash, type, state, seq, body) AS
    SELECT hash, type, 1, 0, body FROM factbus_log
    UNION ALL SELECT hash, type, 2, seq, body FROM factbus_parked
"""
"""Schema 1's table as a read-only view (state 1 handled, 2 parked), for readers
that query it (tools, tests)."""

_MIGRATE_FROM_1 = (
    "INSERT INTO factbus_log (hash, type, body) "
    "SELECT hash, type, body FROM factbus_facts WHERE state = 1",
    "INSERT INTO factbus_parked (seq, hash, type, body) "
    "SELECT seq, hash, type, body FROM factbus_facts WHERE state = 2 ORDER BY seq",
    "DROP INDEX IF EXISTS factbus_facts_parked",
    "DROP TABLE factbus_facts",
)


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


_ROWS_PER_INSERT: Final = 128
"""Rows per multi-row ``INSERT ... VALUES (...), (...)``: about a third less CPU
per row than ``executemany`` (one statement step per 128 rows, not per row)."""
_LOG_WITH_BODY: Final = "INSERT INTO factbus_log (hash, type, body) VALUES "
_LOG_WITHOUT_BODY: Final = "INSERT INTO factbus_log (hash, type) VALUES "
"""The log inserts leave the id to SQLite (the largest rowid plus one: the ids
the index was given, which the last rowid confirms, see :meth:`SqliteStore._keep_ids`):
one value less to bind per row, and SQLite appends a row whose rowid it chose
without first seeking that rowid (PROFILE.md §23)."""
_LOG_WITH_ID: Final = "INSERT INTO factbus_log (id, hash, type, body) VALUES "
"""The log insert with the ids given, for the rare rows SQLite gave others
(:meth:`SqliteStore._keep_ids`)."""
_CACHED_STATEMENTS: Final = 512
"""Prepared statements the connection keeps (sqlite3's default: 128). A step's
log insert is one of up to ``2 * _ROWS_PER_INSERT`` texts (its row count modulo
:data:`_ROWS_PER_INSERT`, with or without bodies), and its look-ups a few
dozen more: with 128 they evicted each other, each step compiled one afresh,
and the evicted statements, having lived through young collections, were
counted as long-lived objects towards the next full collection
(PROFILE.md, "Survivors")."""


def _columns(count: int, *columns: Iterable[Any]) -> list[Any]:
    """The values of ``count`` rows in one flat list, row after row, from one
    iterable per column (each of ``count`` values, else :class:`ValueError`):
    C-level slice assignments, less than half the CPU of flattening zipped rows
    (PROFILE.md §23)."""
    width = len(columns)
    values: list[Any] = [None] * (count * width)
    for at, column in enumerate(columns):
        values[at::width] = column
    return values


def _insert_many(db: sqlite3.Cursor, insert: str, width: int, values: list[Any]) -> int | None:
    """``insert`` (``INSERT INTO t (c1, ...) VALUES ``) of ``values``, rows of
    ``width`` values each one after the other, :data:`_ROWS_PER_INSERT` rows
    per statement (full ones reuse one cached statement; a partial one, one of
    the ``_ROWS_PER_INSERT - 1`` others, each cached too: see
    :data:`_CACHED_STATEMENTS`). Returns the rowid of the last row inserted
    (None if no row was)."""
    step = _ROWS_PER_INSERT * width
    full = insert + ",".join(["(" + ",".join("?" * width) + ")"] * _ROWS_PER_INSERT)
    for at in range(0, len(values), step):
        part = values[at : at + step]
        if len(part) == step:
            db.execute(full, part)
        else:
            rows_left = len(part) // width
            db.execute(insert + ",".join(["(" + ",".join("?" * width) + ")"] * rows_left), part)
    return db.lastrowid if values else None


async def _wait_out(pending: asyncio.Future[None], *, reraise: bool = False) -> bool:
    """Wait until ``pending`` (a statement in the writer thread) is done, even when
    the waiting task is cancelled meanwhile: the statement runs on whatever the
    task does, and what follows depends on its outcome. Returns whether the task
    was cancelled (or, with ``reraise``, raises :class:`asyncio.CancelledError`
    then, once ``pending`` is done). Never cancels ``pending``."""
    cancelled = False
    while not pending.done():
        try:
            await asyncio.wait((pending,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled and reraise:
        raise asyncio.CancelledError
    return cancelled


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


def _in_ids(count: int) -> str:
    return f"id IN ({','.join('?' * count)})"


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
        mark, last_id = self._store._undo_mark(), self._store._last_id
        self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._db.execute(f"ROLLBACK TO {name}")
            self._db.execute(f"RELEASE {name}")
            self._store._undo(mark)
            self._store._last_id = last_id  # the log's rows after it went too
            raise
        self._db.execute(f"RELEASE {name}")

    async def claim(self, refs: Sequence[FactRef]) -> set[FactRef]:
        return set(refs)  # one node per store: nothing to contend with

    async def record(self, batch: StoreBatch) -> None:
        self._store._apply(self._db, batch)


class SqliteStore:
    """SQLite store; see the module docstring for its layout, threading and durability."""

    shared: Final = False
    """One node per file: see :attr:`factbus.store.Store.shared`."""

    def __init__(self, url: str = "sqlite:///factbus.db") -> None:
        self.url = url
        self.path = sqlite_path(url)
        options = query_options(url, ("keep_bodies", "commit_thread"), what="sqlite store")
        self.keep_bodies = parse_bool("keep_bodies", options.get("keep_bodies", "0"))
        """Keep handled facts' content (for :meth:`load`); off by default: dedup
        needs only identities, and bodies triple the bytes written per fact."""
        self.commit_thread = parse_bool("commit_thread", options.get("commit_thread", "0"))
        """Run each COMMIT in the store's writer thread (``commit_thread=1``): a
        COMMIT slowed by the disk then stalls only the step waiting for it, not
        the loop, for a thread hop per transaction (CPU, and two wake-ups that a
        busy machine delays). Off by default: with the checkpoints in their
        worker a COMMIT takes ~0.1 ms (docs/decisions.md, "SQLite store: the
        COMMIT's thread")."""
        self._db: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        """One cursor for the statements of every step (``BEGIN``, the data-version
        pragma, the log inserts, ``COMMIT``), whose results are read at once:
        ``Connection.execute`` makes a cursor per call, and the connection keeps
        a weak reference to each until its 200th next, so a step's four left
        four weak references that outlived young collections and counted as
        long-lived objects (PROFILE.md, "Survivors"). The connection is
        never used by two threads at once (:meth:`_idle`), nor is this cursor."""
        self._index: dict[int, int] = {}
        """``_key(hash)`` -> the log row of a handled fact with that key."""
        self._overflow: dict[FactRef, int] = {}
        """Handled facts whose key the index gives to another row (same hash of
        another type, or a 64-bit key shared by chance): exact refs -> log row."""
        self._last_id = 0
        """The highest log row this connection knows of (its own and others')."""
        self._journal: list[int | list[int] | FactRef] = []
        """Index entries added by the open transaction (a key, a step's keys, an
        overflow ref), undone if it rolls back."""
        self._data_version = -1
        self._parked_rows = 0
        self._waiting_rows = 0
        self._commits = 0
        self._checkpointer: sqlite3.Connection | None = None
        self._wal_frames = 0
        """WAL size in frames that the last worker checkpoint found (0 once a
        checkpoint copied it all: the next write restarts it)."""
        self._commit_count = 0
        """COMMITs made (counted in the thread that ran each, right after it): the
        worker's checkpoint tells by it whether one landed while it copied."""
        self._committed = threading.Event()
        """Set by each COMMIT: the worker's checkpoint passes begin right after one."""
        self._closing = False
        self._restart_due = False
        """A checkpoint copied the whole WAL: the next COMMIT restarts it and syncs
        its new header (an fsync), so that COMMIT runs in the writer thread."""
        self._checkpoint_lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        """The thread that runs the checkpoint past WAL_BOUND (and, with
        ``commit_thread``, each COMMIT) on the store's connection; nothing else
        uses the connection meanwhile."""
        self._pending: asyncio.Future[None] | None = None
        """The writer thread's last statement, until a call saw it done."""

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        return self._db

    @property
    def cursor(self) -> sqlite3.Cursor:
        """The step statements' cursor (see ``_cursor``)."""
        if self._cursor is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        return self._cursor

    async def open(self) -> None:
        """Create the schema (or migrate schema 1 to the fact log) and load the
        in-memory identity index from the log.

        :raises ConfigError: the file has a schema newer than this factbus knows.
        """
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=_CACHED_STATEMENTS,
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            if self.path != ":memory:":
                db.execute("PRAGMA wal_autocheckpoint=0")  # see CHECKPOINT_EVERY
            self._schema(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._closing = False
        self._cursor = db.cursor()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="factbus-sqlite-writer")
        self._pending = None
        self._index.clear()
        self._overflow.clear()
        self._last_id = 0
        self._data_version = -1
        self._refresh()

    def _schema(self, db: sqlite3.Connection) -> None:
        """Create schema 2, or migrate schema 1 in one transaction (a crash leaves
        the file as it was; the next open migrates again)."""
        db.execute(
            "CREATE TABLE IF NOT EXISTS factbus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value FROM factbus_meta WHERE key='schema'").fetchone()
            version = SCHEMA_VERSION if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: store schema {version} is newer than this factbus "
                    f"knows ({SCHEMA_VERSION}): upgrade factbus"
                )
            for statement in _TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version == 1:
                for statement in _MIGRATE_FROM_1:
                    db.execute(statement)
                log.info("migrated sqlite store to schema 2 (fact log)", path=self.path)
            db.execute(_VIEW)
            db.execute(
                "INSERT INTO factbus_meta VALUES ('schema', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _refresh(self) -> None:
        """Catch up with what another connection committed (``PRAGMA data_version``
        moved): index the log rows it appended, recount parked facts and wait lists.
        Costs one pragma when nothing changed."""
        db = self.db
        version = self.cursor.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        self._load_log(db)
        self._count_waiting()

    def _load_log(self, db: sqlite3.Connection) -> None:
        """Index the log rows above :attr:`_last_id` (all of them on open)."""
        index, overflow = self._index, self._overflow
        if not index and not overflow:
            # The whole log: one C-level dict update (tee splits each row into its
            # key and its id), then the few rows sharing a key.
            count, top = db.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM factbus_log"
            ).fetchone()
            rows, same_rows = tee(
                db.execute("SELECT hash, id FROM factbus_log WHERE id <= ?", (top,))
            )
            index.update(
                zip(map(_key, map(itemgetter(0), rows)), map(itemgetter(1), same_rows), strict=True)
            )
            if len(index) == count:
                self._last_id = top
                return
            # Rare (the same hash of two types, or a 64-bit key shared by chance):
            # a later row took the slot of a key shared, so index the log row by
            # row below: the first row of a key in the index, the others exact.
            index.clear()
            self._last_id = 0
        rows = db.execute(
            "SELECT id, hash, type FROM factbus_log WHERE id > ? ORDER BY id", (self._last_id,)
        )
        for row_id, fact_hash, fact_type in rows:
            key = _key(fact_hash)
            if key in index:
                overflow[FactRef(fact_type, fact_hash)] = row_id
            else:
                index[key] = row_id
            self._last_id = row_id

    async def own(self, owner: str) -> None:
        """See :meth:`factbus.store.Store.own` (kept in ``factbus_meta``)."""
        await self._idle()
        db = self.db
        db.execute("INSERT OR IGNORE INTO factbus_meta VALUES ('owner', ?)", (owner,))
        recorded = db.execute("SELECT value FROM factbus_meta WHERE key='owner'").fetchone()[0]
        check_owner(self.path, recorded, owner)

    def _count_waiting(self) -> None:
        db = self.db
        self._waiting_rows = db.execute("SELECT COUNT(*) FROM factbus_waiting").fetchone()[0]
        self._parked_rows = db.execute("SELECT COUNT(*) FROM factbus_parked").fetchone()[0]

    async def aclose(self) -> None:
        """Close the connections (waits for a COMMIT or checkpoint under way); the
        last connection to the file closing checkpoints the WAL completely."""
        await self._idle()
        self._closing = True
        self._committed.set()  # a checkpoint pass waiting for a COMMIT stops
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            if self._db is not None:
                self._cursor = None
                self._db.close()
                self._db = None

    def _handled(self, refs: Iterable[FactRef]) -> dict[FactRef, int]:
        """The log row of each of ``refs`` that is handled: the index proposes a row
        by key, the row's own hash and type confirm it (one query per chunk)."""
        index, overflow = self._index, self._overflow
        refs = refs if isinstance(refs, Collection) else list(refs)
        out: dict[FactRef, int] = {}
        if not overflow and index.keys().isdisjoint(map(_key, map(itemgetter(1), refs))):
            return out  # none indexed: every new fact's look-up (no query)
        proposed: dict[int, list[FactRef]] = {}
        for ref in refs:
            row_id = index.get(_key(ref.hash))
            if row_id is not None:
                proposed.setdefault(row_id, []).append(ref)
        if overflow:
            for ref in refs:
                if (row_id := overflow.get(ref)) is not None:
                    out[ref] = row_id
        ids = list(proposed)
        for at in range(0, len(ids), _CHUNK):
            chunk = ids[at : at + _CHUNK]
            rows = self.db.execute(
                "SELECT id, hash, type FROM factbus_log WHERE " + _in_ids(len(chunk)),
                chunk,
            )
            for row_id, fact_hash, fact_type in rows:
                for ref in proposed[row_id]:
                    if ref.hash == fact_hash and ref.type == fact_type:
                        out[ref] = row_id
        return out

    async def states(self, refs: Collection[FactRef]) -> dict[FactRef, FactState]:
        await self._idle()
        self._refresh()
        wanted = refs if isinstance(refs, set | frozenset | dict) else set(refs)
        out = dict.fromkeys(self._handled(wanted), FactState.HANDLED)
        if self._parked_rows > 0:
            rest = [ref for ref in wanted if ref not in out]
            for chunk in _chunks(rest):
                rows = self.db.execute(
                    "SELECT hash, type FROM factbus_parked WHERE " + _in_hashes("hash", len(chunk)),
                    _hashes(chunk),
                )
                for fact_hash, fact_type in rows:
                    ref = FactRef(fact_type, fact_hash)
                    if ref in wanted:
                        out[ref] = FactState.PARKED
        return out

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        await self._idle()
        db = self.db
        self.cursor.execute("BEGIN IMMEDIATE")
        last_id = self._last_id
        tx = SqliteTransaction(self, db)
        try:
            self._refresh()  # under the write lock: nobody appends until we end
            last_id = self._last_id
            yield tx
            await tx.run_before_commit()
        except BaseException:
            self._roll_back(db, last_id)
            raise
        cancelled = False
        restarts, self._restart_due = self._restart_due, False
        if self.commit_thread or restarts:
            # The loop runs on meanwhile (other tasks, not this one: it resumes,
            # and its deliveries are acked, once COMMIT returned).
            commit = self._in_writer(self._commit)
            cancelled = await _wait_out(commit)
            error = commit.exception()
        else:
            try:
                self._commit()
                error = None
            except Exception as failed:
                error = failed
        if error is not None:
            # A deferred constraint of a handler's table, a full disk, ...: SQLite
            # may keep the transaction open; nothing of it stays.
            self._roll_back(db, last_id)
            if cancelled:
                raise asyncio.CancelledError from error
            raise error
        self._journal.clear()
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self.path != ":memory:":
            self._commits = 0
            if not self._checkpoint_lock.locked():
                asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
        if self._wal_frames > WAL_BOUND and not self._checkpoint_lock.locked():
            self._wal_frames = 0
            self._in_writer(self._finish_checkpoint)  # see WAL_BOUND; awaited by the next call
        tx.run_after_commit()
        if cancelled:
            raise asyncio.CancelledError  # committed: the deliveries come again, as duplicates

    def _roll_back(self, db: sqlite3.Connection, last_id: int) -> None:
        """Undo the open transaction (if SQLite still has it) and its index entries."""
        if db.in_transaction:
            db.execute("ROLLBACK")
        self._undo(0)
        self._last_id = last_id
        self._count_waiting()  # the counters may have moved with the undone writes

    def _in_writer(self, work: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``work`` in the store's writer thread; calls that use the connection
        wait for it (:meth:`_idle`) until it returns."""
        if self._writer is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        pending = asyncio.get_running_loop().run_in_executor(self._writer, work)
        self._pending = pending
        return pending

    async def _idle(self) -> None:
        """Wait until the writer thread is done with the connection (a COMMIT of
        another task's transaction, a checkpoint). Costs one test when it is."""
        while (pending := self._pending) is not None:
            if not pending.done():
                await _wait_out(pending, reraise=True)
            if self._pending is pending:
                self._pending = None

    def _commit(self) -> None:
        """COMMIT (writer thread). With ``synchronous=NORMAL`` in WAL mode it appends
        the transaction's pages to the WAL, no fsync (but the WAL's new header's
        when it restarts the WAL): milliseconds, but tens of ms when the disk is
        busy (another process, the worker's checkpoint)."""
        self.cursor.execute("COMMIT")
        self._commit_count += 1
        self._committed.set()

    def _finish_checkpoint(self) -> None:
        """Copy the frames committed since the worker's last checkpoint (writer
        thread, between two transactions; see :data:`WAL_BOUND`). A failure is
        logged: the next one retries."""
        try:
            [(busy, frames, copied)] = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if not busy and copied >= frames:
                self._restart_due = frames > 0
        except sqlite3.Error:
            log.warning("sqlite WAL checkpoint failed", path=self.path, exc_info=True)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (worker thread). PASSIVE: it neither
        waits for nor blocks the store's writes; what it cannot copy yet, the next
        one does. Past :data:`WAL_BOUND` frames it copies again what was committed
        meanwhile (see there). A failure is logged: the WAL then grows until one
        succeeds."""
        with self._checkpoint_lock:
            if self._db is None:
                return  # closed meanwhile
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        self.path, isolation_level=None, check_same_thread=False
                    )
                self._wal_frames = self._copy_wal(self._checkpointer)
            except sqlite3.Error:
                log.warning("sqlite WAL checkpoint failed", path=self.path, exc_info=True)

    def _copy_wal(self, db: sqlite3.Connection) -> int:
        """The worker's checkpoint passes (see :data:`WAL_BOUND`) on its connection
        ``db``; returns the WAL's frames (0 when a pass copied them all)."""
        frames = 0
        for attempt in range(CHECKPOINT_PASSES):
            if attempt:
                # Begin right after a COMMIT, so that the pass has the whole gap
                # until the next one to copy in (or at once if none comes).
                self._committed.clear()
                # aclose sets _closing before the event: checked after clear(),
                # a close is seen here or wakes the wait at once.
                if not self._closing:
                    self._committed.wait(COMMIT_WAIT)
                if self._closing:
                    return int(frames)  # aclose waits for this thread: no more passes
            commits = self._commit_count
            # fetchall: a statement left unfinished would hold a read lock on
            # the WAL, and SQLite would never restart it.
            [(busy, frames, copied)] = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if busy or copied < frames:
                return int(frames)  # a reader holds frames: the next time
            if self._commit_count == commits:
                # Nothing committed while it ran: it copied every frame and synced
                # the database file; the next write restarts the WAL.
                self._restart_due = frames > 0
                return 0
            if frames <= WAL_BOUND:
                return int(frames)
        return int(frames)

    def _undo_mark(self) -> int:
        return len(self._journal)

    def _undo(self, mark: int) -> None:
        """Forget the index entries added since ``mark`` (their rows were rolled back)."""
        journal = self._journal
        while len(journal) > mark:
            entry = journal.pop()
            if isinstance(entry, FactRef):
                self._overflow.pop(entry, None)
            elif isinstance(entry, list):
                for key in entry:
                    self._index.pop(key, None)
            else:
                self._index.pop(entry, None)

    def _apply(self, db: sqlite3.Connection, batch: StoreBatch) -> None:
        if batch.parked:
            self._park(db, batch.parked)
        if batch.handled:
            self._append(db, batch.handled)
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

    def _park(self, db: sqlite3.Connection, parked: list[ParkedFact]) -> None:
        handled = self._handled(p.fact.ref for p in parked)
        fresh = [p for p in parked if p.fact.ref not in handled]
        added = db.executemany(
            "INSERT OR IGNORE INTO factbus_parked (hash, type, body) VALUES (?, ?, ?)",
            [(p.fact.hash, p.fact.type, fact_to_bytes(p.fact)) for p in fresh],
        )
        self._parked_rows += max(added.rowcount, 0)
        added = db.executemany(
            "INSERT OR IGNORE INTO factbus_waiting VALUES (?, ?, ?, ?)",
            [
                (missing.hash, missing.type, p.fact.hash, p.fact.type)
                for p in fresh
                for missing in p.missing
            ],
        )
        self._waiting_rows += max(added.rowcount, 0)

    def _append_new(self, db: sqlite3.Connection, facts: list[Fact], refs: list[FactRef]) -> bool:
        """The common case in C-level steps: no key of ``refs`` is indexed and no
        two of them share one (all new facts). Appends them and returns True;
        returns False, having changed nothing, otherwise."""
        index = self._index
        hashes = list(map(itemgetter(1), refs))
        keys = list(map(_key, hashes))
        if not keys:
            return True
        if not index.keys().isdisjoint(keys):
            return False
        size = len(index)
        first = self._last_id + 1
        ids = range(first, first + len(keys))
        index.update(zip(keys, ids, strict=True))
        if len(index) != size + len(keys):  # two of them share a key
            for key in keys:
                index.pop(key, None)
            return False
        self._journal.append(keys)
        # Under BEGIN IMMEDIATE (refreshed) nobody else appends: SQLite gives the
        # rows the ids the index holds, which the last rowid confirms.
        types = map(itemgetter(0), refs)
        if self.keep_bodies:
            bodies = map(fact_to_bytes, facts)
            values = _columns(len(hashes), hashes, types, bodies)
            last = _insert_many(self.cursor, _LOG_WITH_BODY, 3, values)
        else:
            values = _columns(len(hashes), hashes, types)
            last = _insert_many(self.cursor, _LOG_WITHOUT_BODY, 2, values)
        self._last_id = first + len(keys) - 1
        if last != self._last_id:
            self._keep_ids(keys, last)
        return True

    def _keep_ids(self, entries: Sequence[int | FactRef], last: int | None) -> None:
        """Make the rows just appended (``entries``: their index keys and overflow
        refs, in order) have the ids the index was given (up to :attr:`_last_id`)
        when SQLite gave them others, ``last`` the final one: the log's largest
        rowid was not the one this store knew of.

        Lower ids (rows cut off the log's end by another tool): the rows move up
        to the ids given, so that ids keep growing, as every connection on the
        file expects (each indexes only the rows above the highest id it knows
        of: a row given a reused id would never reach the index of one that knew
        the cut rows, which would take its fact for a new one). Higher ids (rows
        this store did not index, never seen): the index takes SQLite's ids."""
        if last is None:
            raise RuntimeError("sqlite store: the log insert reported no row")
        expected = self._last_id
        log.warning(
            "sqlite store: the log's ids were not the ones expected (rows cut off its end?)",
            path=self.path,
            expected=expected,
            got=last,
        )
        count = len(entries)
        first = last - count + 1
        if last < expected:
            cursor = self.cursor
            rows = cursor.execute(
                "SELECT hash, type, body FROM factbus_log WHERE id >= ? ORDER BY id", (first,)
            ).fetchall()
            cursor.execute("DELETE FROM factbus_log WHERE id >= ?", (first,))
            values = _columns(
                count,
                range(expected - count + 1, expected + 1),
                map(itemgetter(0), rows),
                map(itemgetter(1), rows),
                map(itemgetter(2), rows),
            )
            _insert_many(cursor, _LOG_WITH_ID, 4, values)
            return
        index, overflow = self._index, self._overflow
        for row_id, entry in enumerate(entries, first):
            if isinstance(entry, FactRef):
                overflow[entry] = row_id
            else:
                index[entry] = row_id
        self._last_id = last

    def _append_checked(
        self, db: sqlite3.Connection, facts: list[Fact], refs: list[FactRef]
    ) -> None:
        """Append those of ``facts`` not handled yet, each confirmed against the log
        when its key is indexed (a duplicate, another type's fact of the same
        hash, a shared key)."""
        index, journal = self._index, self._journal
        keep = self.keep_bodies
        rows: list[tuple[str, str, bytes | None]] = []
        entries: list[int | FactRef] = []  # the rows' index keys or overflow refs
        suspects: list[Fact] = []  # their key is indexed: handled already, or not
        row_id = self._last_id
        for fact, (fact_type, fact_hash) in zip(facts, refs, strict=True):
            key = _key(fact_hash)
            if key in index:
                suspects.append(fact)
                continue
            row_id += 1
            index[key] = row_id
            journal.append(key)
            entries.append(key)
            rows.append((fact_hash, fact_type, fact_to_bytes(fact) if keep else None))
        if suspects:
            # Rows of this call are not written yet: their refs confirm them.
            written = {(r[0], r[1]) for r in rows}
            done = self._handled(s.ref for s in suspects)
            for fact in suspects:
                ref = fact.ref
                if ref in done or (ref.hash, ref.type) in written:
                    continue
                row_id += 1
                self._overflow[ref] = row_id
                journal.append(ref)
                entries.append(ref)
                written.add((ref.hash, ref.type))
                rows.append((ref.hash, ref.type, fact_to_bytes(fact) if keep else None))
        if rows:
            last = _insert_many(self.cursor, _LOG_WITH_BODY, 3, list(chain.from_iterable(rows)))
            self._last_id = row_id
            if last != row_id:
                self._keep_ids(entries, last)

    def _append(self, db: sqlite3.Connection, facts: list[Fact]) -> None:
        """Append the facts not handled yet to the log and index them; unpark them
        and trim the wait lists (only while anything is parked)."""
        refs = list(map(ref_of, facts))
        if not self._append_new(db, facts, refs):
            self._append_checked(db, facts, refs)
        if self._parked_rows > 0 or self._waiting_rows > 0:
            keys = [(fact_hash, fact_type) for fact_type, fact_hash in refs]
            if self._parked_rows > 0:
                unparked = db.executemany(
                    "DELETE FROM factbus_parked WHERE hash = ? AND type = ?", keys
                )
                self._parked_rows -= max(unparked.rowcount, 0)
            if self._waiting_rows > 0:
                released = db.executemany(
                    "DELETE FROM factbus_waiting WHERE missing_hash = ? AND missing_type = ?", keys
                )
                unwaited = db.executemany(
                    "DELETE FROM factbus_waiting WHERE hash = ? AND type = ?", keys
                )
                self._waiting_rows -= max(released.rowcount, 0) + max(unwaited.rowcount, 0)

    async def waiting_on(
        self, refs: Collection[FactRef], limit: int | None = None
    ) -> list[ParkedFact]:
        waiters: list[FactRef] = []
        await self._idle()
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
            for fact_hash, fact_type, body in self.db.execute(
                "SELECT hash, type, body FROM factbus_parked WHERE "
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
        await self._idle()
        rows = self.db.execute(
            "SELECT body FROM factbus_parked p WHERE NOT EXISTS "
            "(SELECT 1 FROM factbus_waiting w WHERE w.hash = p.hash AND w.type = p.type) "
            "ORDER BY seq LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [fact_from_bytes(body) for (body,) in rows]

    async def parked(self, limit: int = 1000) -> list[ParkedFact]:
        await self._idle()
        rows = self.db.execute(
            "SELECT hash, type FROM factbus_parked ORDER BY seq LIMIT ?", (limit,)
        )
        return self._parked_facts([FactRef(t, h) for h, t in rows])

    async def counts(self) -> dict[str, int]:
        await self._idle()
        self._refresh()
        db = self.db
        published = db.execute("SELECT COUNT(*) FROM factbus_published").fetchone()[0]
        return {
            "handled": len(self._index) + len(self._overflow),
            "parked": db.execute("SELECT COUNT(*) FROM factbus_parked").fetchone()[0],
            "published": published,
        }

    async def published(self, refs: Collection[FactRef]) -> set[FactRef]:
        await self._idle()
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
        await self._idle()
        row = self.db.execute("SELECT next FROM factbus_positions WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    async def load(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        await self._idle()
        self._refresh()
        out: dict[FactRef, Fact] = {}
        wanted = set(refs)
        ids = list(self._handled(wanted).values())
        for at in range(0, len(ids), _CHUNK):
            chunk = ids[at : at + _CHUNK]
            for (body,) in self.db.execute(
                "SELECT body FROM factbus_log WHERE body IS NOT NULL AND " + _in_ids(len(chunk)),
                chunk,
            ):
                fact = fact_from_bytes(body)
                out[fact.ref] = fact
        for refs_chunk in _chunks(wanted - out.keys()):
            rows = self.db.execute(
                "SELECT hash, type, body FROM factbus_parked WHERE "
                + _in_hashes("hash", len(refs_chunk)),
                _hashes(refs_chunk),
            )
            for fact_hash, fact_type, body in rows:
                if FactRef(fact_type, fact_hash) in wanted:
                    fact = fact_from_bytes(body)
                    out[fact.ref] = fact
        return out

    def __repr__(self) -> str:
        return f"SqliteStore({redact(self.url)!r})"
