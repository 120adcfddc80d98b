"""``postgresql://user:pass@host:5432/db``: one store shared by a group of workers.

Group mode (DESIGN.md §4) runs N workers on one broker group; they share this
store so that dedup and causal order hold across them. Every worker sees the
same handled marks, parked facts and wait lists, and :meth:`PostgresTransaction.claim`
makes sure one worker at a time handles a given fact.

URL options (query string; every other query parameter, e.g. ``sslmode``, is
passed to asyncpg untouched)::

    schema=public     schema of the store's tables; created if missing
    prefix=factbus_   table-name prefix (one store per schema + prefix)
    pool_min=1        connections kept open
    pool_max=4        connections at most (a bus uses two at a time)
    connect_timeout=10    seconds to establish a connection
    command_timeout=60    seconds a statement may take before it is cancelled
    fact_cache=20000  decoded facts kept per process (0: none); parked facts
                      are read back many times, and decoding verifies the hash
    custom_plans=true     the pool's connections plan every statement with its
                      actual parameters (plan_cache_mode=force_custom_plan),
                      handlers' statements included: a generic plan cached
                      while a table was still small would scan the table on
                      every call until the next auto-analyze. ``false`` keeps
                      PostgreSQL's default (saves planning time per statement)

Tables (``<prefix>`` before each name): ``meta`` (schema version), ``facts``
(hash, type, state 1 handled / 2 parked, arrival ``seq``, body), ``waiting``
(one row per parked fact and predecessor it missed when parked),
``published`` and ``positions`` (read positions in broker logs, e.g. RabbitMQ
streams, per key). They are created idempotently at :meth:`PostgresStore.open`,
under an advisory lock, so N workers may start at once.

Concurrency contract:

- ``claim`` takes ``pg_try_advisory_xact_lock`` on a 64-bit key derived from
  the schema, prefix, type and hash (so two stores in one database never
  contend), then, in a second statement (a fresh snapshot taken after the lock),
  drops refs already handled. A worker holding the lock has either not
  committed yet, or its commit is visible to that second statement: one fact,
  one handler, across the group. Claims end with the transaction (commit,
  rollback, or the connection dying with its process).
- ``record`` writes facts with ``INSERT ... ON CONFLICT``: a handled fact never
  goes back to parked. Rows are written in one sorted order so that concurrent
  steps lock them in the same order. A wait-list row is removed only when the
  *waiting* fact is handled, never when its predecessor is: a fact parked
  concurrently with the handling of its predecessor therefore stays findable
  by ``waiting_on(predecessor)`` after both commit (the pipeline's post-commit
  follow-up relies on it). ``missing`` as returned by ``waiting_on``,
  ``parked`` and ``ready_parked`` counts only predecessors not handled yet.
- Every query takes its refs as arrays (``unnest``): one round trip per call,
  whatever the number of facts.

No LISTEN/NOTIFY: the pipeline's post-commit follow-up closes the race between
a worker that parks a fact and one that handles its predecessor, and idle
workers sweep parked facts every two seconds as a safety net (a worker killed
between its commit and its follow-up).
"""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from factbus.errors import ConfigError, MissingDriver
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
from factbus.store.postgres_config import PostgresConfig
from factbus.urls import redact

try:
    import asyncpg
except ImportError as _error:  # pragma: no cover - exercised by the missing-driver test
    raise MissingDriver("postgresql", "postgres", _error) from _error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Sequence

    from asyncpg.pool import PoolConnectionProxy

SCHEMA_VERSION: Final = 1
HANDLED: Final = int(FactState.HANDLED)
PARKED: Final = int(FactState.PARKED)


class _Sql:
    """Every statement, with the schema and prefix filled in once."""

    def __init__(self, schema: str, prefix: str) -> None:
        t = f'"{schema}"."{prefix}'
        self.facts = facts = f'{t}facts"'
        self.waiting = waiting = f'{t}waiting"'
        self.published = published = f'{t}published"'
        self.meta = meta = f'{t}meta"'
        self.positions = positions = f'{t}positions"'
        self.create_schema = f'CREATE SCHEMA IF NOT EXISTS "{schema}"'
        self.create_tables = f"""
            CREATE TABLE IF NOT EXISTS {meta} (key text PRIMARY KEY, value text NOT NULL);
            CREATE TABLE IF NOT EXISTS {facts} (
                hash text NOT NULL,
                type text NOT NULL,
                state smallint NOT NULL,
                seq bigint GENERATED ALWAYS AS IDENTITY,
                body bytea NOT NULL,
                PRIMARY KEY (hash, type)
            );
            CREATE INDEX IF NOT EXISTS "{prefix}facts_parked" ON {facts} (seq) WHERE state = 2;
            CREATE TABLE IF NOT EXISTS {waiting} (
                missing_hash text NOT NULL,
                missing_type text NOT NULL,
                hash text NOT NULL,
                type text NOT NULL,
                PRIMARY KEY (missing_hash, missing_type, hash, type)
            );
            CREATE INDEX IF NOT EXISTS "{prefix}waiting_by_fact" ON {waiting} (hash, type);
            CREATE TABLE IF NOT EXISTS {published} (
                hash text NOT NULL, type text NOT NULL, PRIMARY KEY (hash, type)
            );
            CREATE TABLE IF NOT EXISTS {positions} (key text PRIMARY KEY, next bigint NOT NULL);
        """
        self.schema_exists = "SELECT 1 FROM pg_namespace WHERE nspname = $1"
        self.version = f"SELECT value FROM {meta} WHERE key = 'schema'"
        self.set_version = (
            f"INSERT INTO {meta} (key, value) VALUES ('schema', $1) ON CONFLICT DO NOTHING"
        )
        self.set_owner = (
            f"INSERT INTO {meta} (key, value) VALUES ('owner', $1) ON CONFLICT DO NOTHING"
        )
        self.owner = f"SELECT value FROM {meta} WHERE key = 'owner'"
        self.states = (
            f"SELECT f.hash, f.type, f.state FROM unnest($1::text[], $2::text[]) AS u(h, t) "
            f"JOIN {facts} f ON f.hash = u.h AND f.type = u.t"
        )
        # Predecessors a parked fact still misses: its wait-list rows whose
        # predecessor is not handled (rows are kept until the fact itself is).
        still_missing = (
            f"ARRAY(SELECT w.missing_hash || ' ' || w.missing_type FROM {waiting} w "
            f"WHERE w.hash = f.hash AND w.type = f.type AND NOT EXISTS "
            f"(SELECT 1 FROM {facts} p WHERE p.hash = w.missing_hash "
            f"AND p.type = w.missing_type AND p.state = 1))"
        )
        self.waiting_on = (
            f"WITH waiters AS (SELECT DISTINCT w.hash, w.type "
            f"FROM unnest($1::text[], $2::text[]) AS u(h, t) "
            f"JOIN {waiting} w ON w.missing_hash = u.h AND w.missing_type = u.t) "
            f"SELECT f.hash, f.type, f.body, {still_missing} AS missing FROM waiters "
            f"JOIN {facts} f ON f.hash = waiters.hash AND f.type = waiters.type "
            f"WHERE f.state = 2 ORDER BY f.seq LIMIT $3"
        )
        self.parked = (
            f"SELECT f.hash, f.type, f.body, {still_missing} AS missing FROM {facts} f "
            f"WHERE f.state = 2 ORDER BY f.seq LIMIT $1"
        )
        self.ready_parked = (
            f"SELECT f.hash, f.type, f.body FROM {facts} f WHERE f.state = 2 AND NOT EXISTS "
            f"(SELECT 1 FROM {waiting} w WHERE w.hash = f.hash AND w.type = f.type "
            f"AND NOT EXISTS (SELECT 1 FROM {facts} p WHERE p.hash = w.missing_hash "
            f"AND p.type = w.missing_type AND p.state = 1)) ORDER BY f.seq LIMIT $1"
        )
        self.counts = (
            f"SELECT (SELECT count(*) FROM {facts} WHERE state = 1), "
            f"(SELECT count(*) FROM {facts} WHERE state = 2), "
            f"(SELECT count(*) FROM {published})"
        )
        self.published_of = (
            f"SELECT p.hash, p.type FROM unnest($1::text[], $2::text[]) AS u(h, t) "
            f"JOIN {published} p ON p.hash = u.h AND p.type = u.t"
        )
        self.load = (
            f"SELECT f.hash, f.type, f.body FROM unnest($1::text[], $2::text[]) AS u(h, t) "
            f"JOIN {facts} f ON f.hash = u.h AND f.type = u.t"
        )
        # record(): one statement per table, rows sorted by identity.
        self.write_facts = (
            f"INSERT INTO {facts} AS f (hash, type, state, body) "
            f"SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::bytea[]) "
            f"ON CONFLICT (hash, type) DO UPDATE SET state = 1 "
            f"WHERE EXCLUDED.state = 1 AND f.state = 2"
        )
        self.write_waiting = (
            f"INSERT INTO {waiting} (missing_hash, missing_type, hash, type) "
            f"SELECT u.mh, u.mt, u.h, u.t "
            f"FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(mh, mt, h, t) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {facts} f "
            f"WHERE f.hash = u.h AND f.type = u.t AND f.state = 1) "
            f"AND NOT EXISTS (SELECT 1 FROM {facts} p "
            f"WHERE p.hash = u.mh AND p.type = u.mt AND p.state = 1) "
            f"ON CONFLICT DO NOTHING"
        )
        self.unwait = (
            f"DELETE FROM {waiting} w USING unnest($1::text[], $2::text[]) AS u(h, t) "
            f"WHERE w.hash = u.h AND w.type = u.t"
        )
        self.write_published = (
            f"INSERT INTO {published} (hash, type) "
            f"SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
        )
        self.write_position = (
            f"INSERT INTO {positions} (key, next) VALUES ($1, $2) "
            f"ON CONFLICT (key) DO UPDATE SET next = excluded.next"
        )
        self.position = f"SELECT next FROM {positions} WHERE key = $1"
        self.try_lock = (
            "SELECT u.i FROM unnest($1::int8[]) WITH ORDINALITY AS u(k, i) "
            "WHERE pg_try_advisory_xact_lock(u.k)"
        )
        self.unhandled = (
            f"SELECT u.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(h, t, i) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {facts} f "
            f"WHERE f.hash = u.h AND f.type = u.t AND f.state = 1)"
        )


def _columns(refs: Collection[FactRef]) -> tuple[list[str], list[str]]:
    return [ref.hash for ref in refs], [ref.type for ref in refs]


def _missing(rows: Sequence[str]) -> frozenset[FactRef]:
    # "hash type": a base64 hash has no space, a type may.
    pairs = (row.split(" ", 1) for row in rows)
    return frozenset(FactRef(fact_type, fact_hash) for fact_hash, fact_type in pairs)


class _FactCache:
    """A bounded FIFO of decoded facts. Facts are immutable and stored under their
    identity, so a cached object is as good as decoding the body again (which
    recomputes the hash)."""

    __slots__ = ("_capacity", "_facts")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._facts: dict[tuple[str, str], Fact] = {}

    def decode(self, fact_hash: str, fact_type: str, body: bytes) -> Fact:
        key = (fact_hash, fact_type)
        fact = self._facts.get(key)
        if fact is None:
            fact = fact_from_bytes(body)
            if fact.hash != fact_hash or fact.type != fact_type:
                raise ValueError(f"stored fact {fact_type}#{fact_hash[:12]} is corrupt")
            self.add(fact)
        return fact

    def add(self, fact: Fact) -> None:
        if self._capacity <= 0:
            return
        facts = self._facts
        facts[(fact.hash, fact.type)] = fact
        if len(facts) > self._capacity:
            for key in list(facts)[: len(facts) - self._capacity + self._capacity // 8]:
                del facts[key]


class PostgresTransaction(CommitHooks):
    """One transaction on a pooled connection; see the module docstring for ``claim``."""

    def __init__(
        self, store: PostgresStore, connection: PoolConnectionProxy[asyncpg.Record]
    ) -> None:
        super().__init__()
        self._store = store
        self._conn = connection
        self._savepoints = 0
        self._unreleased: str | None = None

    @property
    def connection(self) -> PoolConnectionProxy[asyncpg.Record]:
        """The asyncpg connection; transactional handlers write through it."""
        return self._conn

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A SAVEPOINT around the body; rolled back to if the body raises.

        A savepoint that succeeded is released lazily, in the same round trip
        as the next ``SAVEPOINT`` (or implicitly by the commit): one round
        trip per transactional handler call instead of two.
        """
        self._savepoints += 1
        name = f"factbus_sp{self._savepoints}"
        statement = f"SAVEPOINT {name}"
        if self._unreleased is not None:
            statement = f"RELEASE SAVEPOINT {self._unreleased}; {statement}"
            self._unreleased = None
        await self._conn.execute(statement)
        try:
            yield
        except BaseException:
            self._unreleased = None  # released by the rollback below
            await self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            raise
        # Releasing this one also releases any still open inside it.
        self._unreleased = name

    async def claim(self, refs: Sequence[FactRef]) -> set[FactRef]:
        """Claim ``refs``: those no other open transaction holds and not handled yet.

        Two statements: the advisory locks first, then the handled check, so
        the check reads a snapshot taken after every lock was granted.
        """
        if not refs:
            return set()
        unique = list(dict.fromkeys(refs))
        key = self._store.claim_key
        sql = self._store.sql
        locked = [
            unique[i - 1] for (i,) in await self._conn.fetch(sql.try_lock, [key(r) for r in unique])
        ]
        if not locked:
            return set()
        rows = await self._conn.fetch(sql.unhandled, *_columns(locked))
        return {locked[i - 1] for (i,) in rows}

    async def record(self, batch: StoreBatch) -> None:
        """Apply ``batch`` (see the module docstring: handled never goes back to parked)."""
        conn = self._conn
        sql = self._store.sql
        rows: dict[FactRef, tuple[int, Fact]] = {}
        for parked in batch.parked:
            rows.setdefault(parked.fact.ref, (PARKED, parked.fact))
            self._store._facts.add(parked.fact)
        for fact in batch.handled:
            rows[fact.ref] = (HANDLED, fact)
        if rows:
            order = sorted(rows)
            await conn.execute(
                sql.write_facts,
                [ref.hash for ref in order],
                [ref.type for ref in order],
                [rows[ref][0] for ref in order],
                [fact_to_bytes(rows[ref][1]) for ref in order],
            )
        # Every predecessor gets a wait-list row, not only those the caller says
        # are missing: a predecessor the caller expected to handle in this very
        # step may have been claimed by another worker instead. Rows for
        # predecessors already handled are skipped by the statement.
        edges = sorted(
            {
                (pred, p.fact.ref)
                for p in batch.parked
                if rows[p.fact.ref][0] == PARKED
                for pred in (*p.missing, *p.fact.predecessor_refs())
            }
        )
        if edges:
            await conn.execute(
                sql.write_waiting,
                [m.hash for m, _ in edges],
                [m.type for m, _ in edges],
                [r.hash for _, r in edges],
                [r.type for _, r in edges],
            )
        if batch.handled:
            handled = sorted({fact.ref for fact in batch.handled})
            await conn.execute(sql.unwait, *_columns(handled))
        if batch.published:
            await conn.execute(sql.write_published, *_columns(sorted(set(batch.published))))
        for key, offset in sorted(batch.positions.items()):
            await conn.execute(sql.write_position, key, offset)


class PostgresStore:
    """The PostgreSQL store; see the module docstring for options and contracts.

    ``shared = True`` tells the :class:`~factbus.Bus` that other workers write
    to this store at the same time (claims, post-commit follow-up, sweeps).
    Methods may be called from several tasks at once (each takes a pooled
    connection).
    """

    shared: Final = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.config = PostgresConfig.from_url(url)
        self.sql = _Sql(self.config.schema, self.config.prefix)
        self._salt = hashlib.blake2b(
            f"factbus:{self.config.schema}.{self.config.prefix}".encode(), digest_size=32
        ).digest()
        self._pool: asyncpg.Pool | None = None
        self._facts = _FactCache(self.config.fact_cache)

    # -- life cycle ---------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open: await store.open() first")
        return self._pool

    async def open(self) -> None:
        """Connect and create the schema and tables if missing. Idempotent.

        :raises ConfigError: the tables exist with another schema version.
        :raises OSError, asyncpg.PostgresError: the server cannot be reached or refused.
        """
        if self._pool is not None:
            return
        config = self.config
        pool = await asyncpg.create_pool(
            config.dsn,
            min_size=config.pool_min,
            max_size=config.pool_max,
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings=self._server_settings(),
        )
        try:
            await self._create_schema(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": "factbus", "jit": "off"}
        if self.config.custom_plans:
            # A generic plan chosen while a table was nearly empty (a new store,
            # a new effect table) would scan it on every call until the next
            # auto-analyze; plan with the actual arrays each time instead.
            settings["plan_cache_mode"] = "force_custom_plan"
        return settings

    async def _create_schema(self, pool: asyncpg.Pool) -> None:
        sql = self.sql
        async with pool.acquire() as conn, conn.transaction():
            # N workers may open at once: DDL under one lock per schema + prefix.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self.claim_key(_DDL_REF))
            if await conn.fetchval(sql.schema_exists, self.config.schema) is None:
                await conn.execute(sql.create_schema)
            await conn.execute(sql.create_tables)
            await conn.execute(sql.set_version, str(SCHEMA_VERSION))
            version = await conn.fetchval(sql.version)
        if version != str(SCHEMA_VERSION):
            raise ConfigError(
                f"{self.config.schema}.{self.config.prefix}*: store schema {version} "
                f"is not {SCHEMA_VERSION}"
            )

    async def own(self, owner: str) -> None:
        """See :meth:`factbus.store.Store.own` (kept in the ``meta`` table)."""
        async with self.pool.acquire() as conn:
            await conn.execute(self.sql.set_owner, owner)
            recorded = await conn.fetchval(self.sql.owner)
        check_owner(f"{self.config.schema}.{self.config.prefix}*", recorded, owner)

    async def aclose(self) -> None:
        """Close the pool (waits for connections in use, then terminates). Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:  # e.g. the server went away: drop the sockets
                pool.terminate()

    def claim_key(self, ref: FactRef) -> int:
        """The advisory-lock key of ``ref`` in this store (signed 64-bit)."""
        digest = hashlib.blake2b(
            f"{ref.type}\x00{ref.hash}".encode(), digest_size=8, key=self._salt
        ).digest()
        return int.from_bytes(digest, "big", signed=True)

    # -- reads ----------------------------------------------------------------

    async def states(self, refs: Collection[FactRef]) -> dict[FactRef, FactState]:
        if not refs:
            return {}
        rows = await self.pool.fetch(self.sql.states, *_columns(refs))
        return {FactRef(t, h): FactState(s) for h, t, s in rows}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                tx = PostgresTransaction(self, conn)
                yield tx
                await tx.run_before_commit()
            tx.run_after_commit()

    async def waiting_on(
        self, refs: Collection[FactRef], limit: int | None = None
    ) -> list[ParkedFact]:
        if not refs:
            return []
        rows = await self.pool.fetch(self.sql.waiting_on, *_columns(refs), limit)
        decode = self._facts.decode
        return [ParkedFact(decode(h, t, body), _missing(missing)) for h, t, body, missing in rows]

    async def ready_parked(self, limit: int | None = None) -> list[Fact]:
        rows = await self.pool.fetch(self.sql.ready_parked, limit)
        decode = self._facts.decode
        return [decode(h, t, body) for h, t, body in rows]

    async def parked(self, limit: int = 1000) -> list[ParkedFact]:
        rows = await self.pool.fetch(self.sql.parked, limit)
        decode = self._facts.decode
        return [ParkedFact(decode(h, t, body), _missing(missing)) for h, t, body, missing in rows]

    async def counts(self) -> dict[str, int]:
        row = await self.pool.fetchrow(self.sql.counts)
        assert row is not None
        return {"handled": row[0], "parked": row[1], "published": row[2]}

    async def published(self, refs: Collection[FactRef]) -> set[FactRef]:
        if not refs:
            return set()
        rows = await self.pool.fetch(self.sql.published_of, *_columns(refs))
        return {FactRef(t, h) for h, t in rows}

    async def position(self, key: str) -> int | None:
        value = await self.pool.fetchval(self.sql.position, key)
        return None if value is None else int(value)

    async def load(self, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        if not refs:
            return {}
        rows = await self.pool.fetch(self.sql.load, *_columns(refs))
        decode = self._facts.decode
        return {FactRef(t, h): decode(h, t, body) for h, t, body in rows}

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"


_DDL_REF: Final = FactRef("factbus.ddl", "schema")
"""A pseudo-ref whose claim key serialises DDL of one schema + prefix."""

__all__ = ["PostgresConfig", "PostgresStore", "PostgresTransaction"]
