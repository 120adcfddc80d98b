"""The outbox: facts the application writes inside its own SQL transaction.

The application ``INSERT``s a fact (the JSON of ``POST /facts``'s items, see
:mod:`factbus.sidecar.api`) into the outbox table in the same transaction as
its own rows, so its state and its facts never disagree. The sidecar reads the
table in ``id`` order, publishes the facts (broker-confirmed), then deletes
their rows: at least once, and receivers deduplicate, so a crash between the
publish and the delete is harmless.

Tables (created if missing, in the application's database = the store's)::

    <outbox>        (id INTEGER/BIGSERIAL PRIMARY KEY, fact TEXT NOT NULL, created_at)
    <outbox>_errors (id PRIMARY KEY, fact TEXT NOT NULL, reason TEXT NOT NULL, failed_at)

A row that cannot become a fact (not JSON, an invalid value, a predecessor
given by reference that this sidecar does not know, a fact too large for an
envelope) is **moved** to
``<outbox>_errors`` with the reason (``code: message``, the same codes as the
HTTP API), in one transaction: it is never lost silently and never blocks the
rows after it. Fix and re-insert it by hand. Rows whose publish fails (broker
down) stay where they are and are retried with back-off.

Wake-up: PostgreSQL ``LISTEN`` on a channel fed by an ``AFTER INSERT`` trigger
(plus a slow poll in case a notification is lost while reconnecting); SQLite
polls every :data:`SQLITE_POLL` seconds. On PostgreSQL a batch is read with
``FOR UPDATE SKIP LOCKED`` inside one transaction, so several sidecars may
share one outbox; on SQLite only one sidecar should serve an outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from factbus.canonical import DEFAULT_MAX_DEPTH
from factbus.envelope import DEFAULT_MAX_BYTES
from factbus.errors import ConfigError
from factbus.fact import Fact, FactRef
from factbus.sidecar.api import (
    ParsedFacts,
    RequestError,
    decode_json,
    parse_fact,
    unknown_predecessor,
)
from factbus.store import sql_dialect

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger("factbus.sidecar.outbox")

SQLITE_POLL: Final = 0.2
"""Seconds between polls of a SQLite outbox."""
POSTGRES_POLL: Final = 2.0
"""Seconds between safety polls of a PostgreSQL outbox (LISTEN wakes it sooner)."""
BATCH: Final = 1000
"""Rows published per pass."""
MAX_BACKOFF: Final = 5.0

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}(\.[A-Za-z_][A-Za-z0-9_]{0,50})?$")

Publish = Callable[[Sequence[Fact]], Awaitable[list[str]]]
"""Publishes facts (broker-confirmed); raises when the broker did not confirm."""
Unknown = Callable[[Collection[FactRef]], Awaitable[set[FactRef]]]
"""Returns the references, among those given, that the sidecar does not know."""

Row = tuple[int, str]
Failed = tuple[int, str, str]  # id, fact text, reason


class _Backend(Protocol):
    async def open(self) -> None: ...
    async def aclose(self) -> None: ...
    async def wait(self, timeout: float) -> None: ...
    def batch(self, limit: int) -> contextlib.AbstractAsyncContextManager[_Batch]: ...


class _Batch(Protocol):
    rows: list[Row]

    async def settle(self, done: Sequence[int], failed: Sequence[Failed]) -> None: ...


def check_name(table: str) -> str:
    """``table`` if it is a plain or schema-qualified SQL identifier.

    :raises ConfigError: anything else (it is interpolated into SQL).
    """
    if not _NAME.match(table):
        raise ConfigError(
            f"[sidecar] outbox = {table!r}: use letters, digits and _ (optionally schema.table)"
        )
    return table


class Outbox:
    """Publishes the rows of one outbox table; see the module docstring.

    :meth:`start` creates the tables if missing and starts the background task;
    :meth:`aclose` lets the pass in progress finish (publish, then delete), then
    stops. :meth:`process` runs one pass (tests, and the task's body).
    """

    def __init__(
        self,
        table: str,
        store_url: str,
        publish: Publish,
        unknown: Unknown,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.table = check_name(table)
        self._max_depth = max_depth
        self._max_bytes = max_bytes
        self._publish = publish
        self._unknown = unknown
        self._backend = _backend(self.table, store_url)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.published = 0
        """Rows published and deleted since start."""
        self.failed = 0
        """Rows moved to the errors table since start."""

    async def start(self) -> None:
        await self._backend.open()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"factbus-outbox-{self.table}")

    async def aclose(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._backend.aclose()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                count = await self.process()
                failures = 0
            except Exception:
                failures += 1
                log.exception("outbox pass failed; the rows stay and are retried", table=self.table)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(0.1 * 2**failures, MAX_BACKOFF)):
                        await self._stopping.wait()
                continue
            if count < BATCH:
                wait = asyncio.create_task(self._backend.wait(POSTGRES_POLL))
                stop = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
                for task in (wait, stop):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def process(self) -> int:
        """Publish one batch of rows and delete them; move bad rows to the errors
        table. Returns how many rows were settled.

        :raises PublishError: the broker did not confirm; every row stays.
        """
        async with self._backend.batch(BATCH) as batch:
            if not batch.rows:
                return 0
            good: list[tuple[int, ParsedFacts]] = []
            failed: list[Failed] = []
            for row_id, text in batch.rows:
                try:
                    parsed = parse_fact(decode_json(text.encode()), max_depth=self._max_depth)
                    parsed.check_size(self._max_bytes)
                    good.append((row_id, parsed))
                except RequestError as error:
                    failed.append((row_id, text, error.reason))
            own = {fact.ref for _, parsed in good for fact in _with_ancestors(parsed.facts)}
            wanted = {ref for _, parsed in good for ref in parsed.references} - own
            unknown = await self._unknown(wanted) if wanted else set()
            facts: list[Fact] = []
            done: list[int] = []
            texts = dict(batch.rows)
            for row_id, parsed in good:
                missing = [(r, p) for r, p in parsed.references.items() if r in unknown]
                if missing:
                    ref, path = missing[0]
                    failed.append((row_id, texts[row_id], unknown_predecessor(ref, path).reason))
                    continue
                facts.extend(parsed.facts)
                done.append(row_id)
            if facts:
                await self._publish(facts)
            await batch.settle(done, failed)
            for row_id, _, reason in failed:
                log.warning("outbox row refused", table=self.table, id=row_id, reason=reason)
            self.published += len(done)
            self.failed += len(failed)
            return len(batch.rows)


def _with_ancestors(facts: Sequence[Fact]) -> list[Fact]:
    out: list[Fact] = []
    stack = list(facts)
    while stack:
        fact = stack.pop()
        out.append(fact)
        stack.extend(fact.ancestors_given)
    return out


def _backend(table: str, store_url: str) -> _Backend:
    dialect = sql_dialect(store_url)
    if dialect == "sqlite":
        return _SqliteBackend(table, store_url)
    if dialect == "postgresql":
        return _PostgresBackend(table, store_url)
    raise ConfigError(
        f"[sidecar] outbox needs a sqlite:// or postgresql:// store (the app's database), "
        f"not {store_url.split(':', 1)[0]}://"
    )


# -- SQLite -------------------------------------------------------------------


class _SqliteBatch:
    def __init__(self, backend: _SqliteBackend, rows: list[Row]) -> None:
        self.rows = rows
        self._backend = backend

    async def settle(self, done: Sequence[int], failed: Sequence[Failed]) -> None:
        await asyncio.to_thread(self._backend.settle, done, failed)


class _SqliteBackend:
    """A connection of its own to the store's file; statements run in a thread
    (the application may hold the write lock for a while)."""

    def __init__(self, table: str, store_url: str) -> None:
        from factbus.store.sqlite import sqlite_path

        self.table = table
        self.errors = f"{table}_errors"
        self.path = sqlite_path(store_url)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._db = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {self.table} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                fact TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
            CREATE TABLE IF NOT EXISTS {self.errors} (
                id INTEGER PRIMARY KEY,
                fact TEXT NOT NULL,
                reason TEXT NOT NULL,
                failed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
            """
        )
        return db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.to_thread(db.close)

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, SQLITE_POLL))

    @contextlib.asynccontextmanager
    async def batch(self, limit: int) -> Any:
        rows = await asyncio.to_thread(self._fetch, limit)
        yield _SqliteBatch(self, rows)

    def _fetch(self, limit: int) -> list[Row]:
        cursor = self.db.execute(f"SELECT id, fact FROM {self.table} ORDER BY id LIMIT ?", (limit,))
        return [(int(i), _text(fact)) for i, fact in cursor.fetchall()]

    def settle(self, done: Sequence[int], failed: Sequence[Failed]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                f"INSERT OR REPLACE INTO {self.errors} (id, fact, reason) VALUES (?, ?, ?)", failed
            )
            db.executemany(
                f"DELETE FROM {self.table} WHERE id = ?",
                [(i,) for i in (*done, *(f[0] for f in failed))],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# -- PostgreSQL ---------------------------------------------------------------


class _PostgresBatch:
    def __init__(self, backend: _PostgresBackend, conn: Any, rows: list[Row]) -> None:
        self.rows = rows
        self._backend = backend
        self._conn = conn

    async def settle(self, done: Sequence[int], failed: Sequence[Failed]) -> None:
        sql = self._backend
        if failed:
            await self._conn.executemany(
                f"INSERT INTO {sql.errors} (id, fact, reason) VALUES ($1, $2, $3) "
                "ON CONFLICT (id) DO UPDATE SET fact = EXCLUDED.fact, reason = EXCLUDED.reason, "
                "failed_at = now()",
                failed,
            )
        ids = [*done, *(f[0] for f in failed)]
        await self._conn.execute(f"DELETE FROM {sql.table} WHERE id = ANY($1::bigint[])", ids)


class _PostgresBackend:
    """A small pool for batches and one connection that LISTENs."""

    def __init__(self, table: str, store_url: str) -> None:
        from factbus.store.postgres_config import PostgresConfig

        self.dsn = PostgresConfig.from_url(store_url).dsn
        self.table = ".".join(f'"{part}"' for part in table.split("."))
        self.errors = ".".join(f'"{part}"' for part in f"{table}_errors".split("."))
        base = table.replace(".", "_")
        self.channel = f"factbus_outbox_{base}"[:63]
        self.function = ".".join(f'"{p}"' for p in f"{table}_notify".split("."))
        self.trigger = f'"{table.split(".")[-1]}_notify"'
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._woken = asyncio.Event()

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.channel)
            await conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS {self.table} (
                    id BIGSERIAL PRIMARY KEY,
                    fact TEXT NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL DEFAULT now());
                CREATE TABLE IF NOT EXISTS {self.errors} (
                    id BIGINT PRIMARY KEY,
                    fact TEXT NOT NULL,
                    reason TEXT NOT NULL,
                    failed_at TIMESTAMPTZ NOT NULL DEFAULT now());
                CREATE OR REPLACE FUNCTION {self.function}() RETURNS trigger
                    LANGUAGE plpgsql AS $$
                    BEGIN PERFORM pg_notify('{self.channel}', ''); RETURN NULL; END $$;
                DROP TRIGGER IF EXISTS {self.trigger} ON {self.table};
                CREATE TRIGGER {self.trigger} AFTER INSERT ON {self.table}
                    FOR EACH STATEMENT EXECUTE FUNCTION {self.function}();
                """
            )
        await self._listen()

    async def _listen(self) -> None:
        import asyncpg

        try:
            self._listener = await asyncpg.connect(self.dsn)
            await self._listener.add_listener(self.channel, self._notified)
        except (OSError, asyncpg.PostgresError):
            log.warning("outbox LISTEN failed; polling until it works", channel=self.channel)
            self._listener = None

    def _notified(self, *_: object) -> None:
        self._woken.set()

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def wait(self, timeout: float) -> None:
        if self._listener is None or self._listener.is_closed():
            await self._listen()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._woken.wait()
        self._woken.clear()

    @contextlib.asynccontextmanager
    async def batch(self, limit: int) -> Any:
        if self._pool is None:
            raise RuntimeError("outbox is not open")
        async with self._pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(
                f"SELECT id, fact FROM {self.table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            yield _PostgresBatch(self, conn, [(int(r["id"]), _text(r["fact"])) for r in records])
