"""The sidecar's SQL, hand-written per dialect: SQLite (``sqlite3``) and PostgreSQL (asyncpg).

Both classes offer the same async methods; each takes the connection to run on
(the store transaction's connection while the bus handles facts, or one the
class opens for reads, start-up and rebuild). Nothing here decides what to
write: :mod:`factbus.sidecar.projection` does.

Where things live:

- **app tables** (the views): unqualified names. SQLite: the store's file.
  PostgreSQL: the first schema of the connection's ``search_path`` (set it in
  the store URL, ``?search_path=shop``), so the app finds them where it looks.
- **the sidecar's bookkeeping**, apart from them: SQLite ``factbus_sidecar_*``;
  PostgreSQL ``<schema>.<prefix>sidecar_*`` with the store URL's ``schema``
  and ``prefix`` options (default ``public.factbus_``). Tables: ``facts`` (the
  archive: ``seq``, hash, type, wire body), ``edges`` (predecessor, role,
  successor's ``seq``), ``leaves`` (property leaves per table, column, entity), ``hiders``
  (active ``unless`` successors per table and row) and ``tables`` (each view's
  definition, to detect configuration changes).

Column types: ``hash`` is text (PostgreSQL ``COLLATE "C"``: byte order, the
same as Python's ``str`` order on base64). Values from fields: PostgreSQL
``jsonb``; SQLite no declared type, so scalars keep their type (booleans as
1/0) and lists/objects are JSON text. Predecessor columns: text (a list role:
JSON text of the hashes). ``*_candidates``: JSON array (``jsonb`` / JSON text).
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import orjson

from factbus.errors import ConfigError
from factbus.fact import Fact, FactRef
from factbus.sidecar.projection import Kind, State, Writes, to_json
from factbus.store import sql_dialect
from factbus.store.base import fact_from_bytes
from factbus.store.sqlite import sqlite_path

if TYPE_CHECKING:
    import asyncpg

_CHUNK: Final = 400
WRITER_CACHE_KIB: Final = 65536
"""SQLite page cache of the store connection the views write through (KiB)."""


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def columnwise(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """``rows`` as one list per column: the array parameters ``$1, $2, ...`` of a
    PostgreSQL statement that reads them back as rows with ``unnest(...)``, so
    that one round trip serves every row. ``rows`` must be non-empty and of
    equal length (else there are no columns, or ``ValueError``)."""
    return [list(column) for column in zip(*rows, strict=True)]


def quote(name: str) -> str:
    """A quoted identifier (names are checked identifiers; quoting keeps them exact)."""
    return '"' + name.replace('"', '""') + '"'


def edges_of(
    facts: Iterable[Fact], seqs: Mapping[tuple[str, str], int]
) -> list[tuple[str, str, int, str]]:
    """(predecessor hash, role, successor seq, predecessor type) of the facts in ``seqs``
    (keyed by (hash, type): those just archived)."""
    out: list[tuple[str, str, int, str]] = []
    for fact in facts:
        seq = seqs.get((fact.hash, fact.type))
        if seq is None:
            continue
        for role, value in fact.predecessors.items():
            refs = (value,) if isinstance(value, FactRef) else value
            out.extend((ref.hash, role, seq, ref.type) for ref in refs)
    return out


class ViewsDb(Protocol):
    """A database holding the archive, the views and their bookkeeping."""

    dialect: str

    async def open(self) -> None: ...
    async def aclose(self) -> None: ...
    def transaction(self) -> Any:
        """``async with db.transaction() as conn``: a write transaction on a
        connection of the class's own (start-up, rebuild)."""

    def reader(self) -> Any:
        """``async with db.reader() as conn``: a connection for reads."""

    async def create_bookkeeping(self, conn: Any) -> None: ...
    async def tune_writer(self, conn: Any) -> None:
        """Adjust the bus's store connection for view writes (once per connection)."""

    async def lock_archive(self, conn: Any) -> None: ...
    async def archive(self, conn: Any, facts: Sequence[Fact]) -> None: ...
    async def load_bodies(self, conn: Any, refs: Collection[FactRef]) -> dict[FactRef, Fact]: ...
    async def load_state(
        self,
        conn: Any,
        state: State,
        leaves: Collection[tuple[str, str]],
        hiders: Collection[tuple[str, str]],
    ) -> None: ...
    async def write(
        self, conn: Any, kinds: Mapping[str, list[tuple[str, Kind]]], writes: Writes
    ) -> None: ...
    async def read_rows(
        self, conn: Any, table: str, kinds: list[tuple[str, Kind]], keys: Collection[str]
    ) -> dict[str, dict[str, Any]]: ...
    async def page_rows(
        self, conn: Any, table: str, kinds: list[tuple[str, Kind]], limit: int, after: str | None
    ) -> list[dict[str, Any]]: ...
    async def table_columns(self, conn: Any, table: str) -> list[str] | None: ...
    async def create_table(self, conn: Any, table: str, kinds: list[tuple[str, Kind]]) -> None: ...
    async def drop_table(self, conn: Any, table: str) -> None: ...
    async def swap_table(self, conn: Any, new: str, table: str) -> None: ...
    async def definitions(self, conn: Any) -> dict[str, str]: ...
    async def set_definition(self, conn: Any, table: str, definition: str) -> None: ...
    async def archive_page(self, conn: Any, after: int, limit: int) -> list[tuple[int, Fact]]: ...
    async def archive_count(self, conn: Any) -> int: ...
    async def closure(self, conn: Any, refs: Collection[FactRef]) -> list[Fact]: ...
    async def successors(
        self, conn: Any, ref: FactRef, role: str, fact_type: str
    ) -> list[FactRef]: ...


def open_views_db(store_url: str) -> ViewsDb:
    """The database of a ``sqlite:///`` or ``postgresql://`` store URL (not opened).

    :raises ConfigError: another kind of store (the views need an SQL store).
    """
    dialect = sql_dialect(store_url)
    if dialect == "sqlite":
        return SqliteViewsDb(store_url)
    if dialect == "postgresql":
        return PostgresViewsDb(store_url)
    scheme = urlsplit(store_url).scheme
    raise ConfigError(
        f"factbus.store: the sidecar's views need a sqlite:/// or postgresql:// store, "
        f"not {f'{scheme}://' if scheme else repr(store_url)}"
    )


# -- SQLite ------------------------------------------------------------------------

_SQLITE_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS factbus_sidecar_facts (
    seq INTEGER PRIMARY KEY, key INTEGER NOT NULL, hash TEXT NOT NULL, type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS factbus_sidecar_facts_key ON factbus_sidecar_facts (key);
CREATE TABLE IF NOT EXISTS factbus_sidecar_edges (
    key INTEGER NOT NULL, role TEXT NOT NULL, predecessor_type TEXT NOT NULL,
    successor INTEGER NOT NULL,
    PRIMARY KEY (key, role, predecessor_type, successor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS factbus_sidecar_leaves (
    tbl TEXT NOT NULL, col TEXT NOT NULL, entity TEXT NOT NULL, leaf TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (tbl, entity, col, leaf)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS factbus_sidecar_hiders (
    tbl TEXT NOT NULL, row TEXT NOT NULL, hider TEXT NOT NULL, PRIMARY KEY (tbl, row, hider)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS factbus_sidecar_tables (
    name TEXT PRIMARY KEY, definition TEXT NOT NULL
);
"""


def hash_key(fact_hash: str) -> int:
    """A fact hash's first 8 bytes as a signed 64-bit integer: SQLite indexes
    this instead of the 88-character text, so the archive's indexes stay small
    (each step's inserts land on random pages of a hash-keyed index, and every
    such page is written again at each commit). Rows found by key are checked
    against the full hash and type."""
    try:
        head = base64.b64decode(fact_hash[:12])
    except (binascii.Error, ValueError):
        head = fact_hash.encode()[:8].ljust(8, b"\0")
    return int.from_bytes(head[:8], "big", signed=True)


def _sqlite_value(value: Any) -> Any:
    if value is None or type(value) in (str, int, float):
        return value
    if isinstance(value, bool):
        return int(value)
    return to_json(value)


def _sqlite_cell(kind: Kind, value: Any) -> Any:
    if kind == "candidates":
        return to_json(value)
    if kind == "pred" and isinstance(value, tuple | list):
        return to_json(value)
    return _sqlite_value(value)


class SqliteViewsDb:
    """Views in the store's SQLite file (see the module docstring)."""

    dialect = "sqlite"

    def __init__(self, store_url: str) -> None:
        self.path = sqlite_path(store_url)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        self._db = db

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the sidecar's database is not open")
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[sqlite3.Connection]:
        yield self.db

    async def create_bookkeeping(self, conn: sqlite3.Connection) -> None:
        for statement in _SQLITE_BOOKKEEPING.split(";"):
            if statement.strip():
                conn.execute(statement)

    async def tune_writer(self, conn: sqlite3.Connection) -> None:
        # The views add several hash-keyed indexes: keep their pages in memory
        # rather than reading them back from the OS at every step.
        size = conn.execute("PRAGMA cache_size").fetchone()[0]
        if 0 > size > -WRITER_CACHE_KIB or 0 <= size < WRITER_CACHE_KIB // 4:
            conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")

    async def lock_archive(self, conn: sqlite3.Connection) -> None:
        return None  # BEGIN IMMEDIATE already excludes every other writer

    async def archive(self, conn: sqlite3.Connection, facts: Sequence[Fact]) -> None:
        # Facts come here once each: the pipeline hands over only facts not
        # handled yet, and one writer archives per bus (archive.claim_archive_writer).
        seqs: dict[tuple[str, str], int] = {}
        for chunk in _chunks(facts, 300):
            rows = conn.execute(
                "INSERT INTO factbus_sidecar_facts (key, hash, type, body) VALUES "
                + ",".join("(?, ?, ?, ?)" for _ in chunk)
                + " RETURNING seq, hash, type",
                [x for f in chunk for x in (hash_key(f.hash), f.hash, f.type, f.wire_bytes())],
            )
            seqs.update(((h, t), seq) for seq, h, t in rows)
        edges = edges_of(facts, seqs)
        if edges:
            conn.executemany(
                "INSERT OR IGNORE INTO factbus_sidecar_edges VALUES (?, ?, ?, ?)",
                [(hash_key(h), role, t, seq) for h, role, seq, t in edges],
            )

    async def _load(
        self, conn: sqlite3.Connection, refs: Collection[FactRef]
    ) -> dict[FactRef, tuple[int, Fact]]:
        wanted = set(refs)
        out: dict[FactRef, tuple[int, Fact]] = {}
        for chunk in _chunks(sorted(wanted)):
            rows = conn.execute(
                "SELECT seq, hash, type, body FROM factbus_sidecar_facts WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                [hash_key(r.hash) for r in chunk],
            )
            for seq, fact_hash, fact_type, body in rows:
                ref = FactRef(fact_type, fact_hash)
                if ref in wanted:
                    out[ref] = (seq, fact_from_bytes(body))
        return out

    async def load_bodies(
        self, conn: sqlite3.Connection, refs: Collection[FactRef]
    ) -> dict[FactRef, Fact]:
        return {ref: fact for ref, (_, fact) in (await self._load(conn, refs)).items()}

    async def load_state(
        self,
        conn: sqlite3.Connection,
        state: State,
        leaves: Collection[tuple[str, str]],
        hiders: Collection[tuple[str, str]],
    ) -> None:
        for tbl, entity in leaves:
            by_col = state.leaves.setdefault((tbl, entity), {})
            for col, leaf, value in conn.execute(
                "SELECT col, leaf, value FROM factbus_sidecar_leaves WHERE tbl = ? AND entity = ?",
                (tbl, entity),
            ):
                by_col.setdefault(col, {})[leaf] = orjson.loads(value)
        for tbl, row in hiders:
            found = {
                h
                for (h,) in conn.execute(
                    "SELECT hider FROM factbus_sidecar_hiders WHERE tbl = ? AND row = ?", (tbl, row)
                )
            }
            state.hiders[(tbl, row)] = found

    async def write(
        self,
        conn: sqlite3.Connection,
        kinds: Mapping[str, list[tuple[str, Kind]]],
        writes: Writes,
    ) -> None:
        bookkeeping: list[tuple[Sequence[Sequence[str]], str]] = [
            (
                writes.leaves_dropped,
                "DELETE FROM factbus_sidecar_leaves WHERE tbl = ? AND col = ? AND entity = ? "
                "AND leaf = ?",
            ),
            (
                writes.leaves_added,
                "INSERT OR REPLACE INTO factbus_sidecar_leaves (tbl, col, entity, leaf, value) "
                "VALUES (?, ?, ?, ?, ?)",
            ),
            (
                writes.hiders_dropped,
                "DELETE FROM factbus_sidecar_hiders WHERE tbl = ? AND row = ? AND hider = ?",
            ),
            (writes.hiders_added, "INSERT OR IGNORE INTO factbus_sidecar_hiders VALUES (?, ?, ?)"),
        ]
        for records, statement in bookkeeping:
            if records:
                conn.executemany(statement, records)
        for table, keys in writes.deleted.items():
            conn.executemany(f"DELETE FROM {quote(table)} WHERE hash = ?", [(k,) for k in keys])
        for table, rows in writes.rows.items():
            columns = kinds[table]
            names = ", ".join(quote(c) for c, _ in columns)
            conn.executemany(
                f"INSERT OR REPLACE INTO {quote(table)} ({names}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                [tuple(_sqlite_cell(k, row[c]) for c, k in columns) for _, row in rows],
            )
        for (table, column), updates in writes.updates.items():
            kind = dict(kinds[table])[column]
            conn.executemany(
                f"UPDATE {quote(table)} SET {quote(column)} = ?, "
                f"{quote(column + '_candidates')} = ? WHERE hash = ?",
                [(_sqlite_cell(kind, v), to_json(c), k) for k, v, c in updates],
            )

    @staticmethod
    def _decode(kinds: list[tuple[str, Kind]], row: Sequence[Any]) -> dict[str, Any]:
        return {
            name: orjson.loads(value) if kind == "candidates" else value
            for (name, kind), value in zip(kinds, row, strict=True)
        }

    async def read_rows(
        self,
        conn: sqlite3.Connection,
        table: str,
        kinds: list[tuple[str, Kind]],
        keys: Collection[str],
    ) -> dict[str, dict[str, Any]]:
        names = ", ".join(quote(c) for c, _ in kinds)
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(sorted(keys)):
            for row in conn.execute(
                f"SELECT {names} FROM {quote(table)} WHERE hash IN ({','.join('?' * len(chunk))})",
                list(chunk),
            ):
                out[row[0]] = self._decode(kinds, row)
        return out

    async def page_rows(
        self,
        conn: sqlite3.Connection,
        table: str,
        kinds: list[tuple[str, Kind]],
        limit: int,
        after: str | None,
    ) -> list[dict[str, Any]]:
        names = ", ".join(quote(c) for c, _ in kinds)
        rows = conn.execute(
            f"SELECT {names} FROM {quote(table)} WHERE hash > ? ORDER BY hash LIMIT ?",
            (after or "", limit),
        ).fetchall()
        return [self._decode(kinds, row) for row in rows]

    async def table_columns(self, conn: sqlite3.Connection, table: str) -> list[str] | None:
        rows = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
        return [r[1] for r in rows] or None

    async def create_table(
        self, conn: sqlite3.Connection, table: str, kinds: list[tuple[str, Kind]]
    ) -> None:
        types = {
            "key": "TEXT NOT NULL PRIMARY KEY",
            "pred": "TEXT",
            "value": "",
            "candidates": "TEXT NOT NULL DEFAULT '[]'",
        }
        columns = ", ".join(f"{quote(c)} {types[k]}".rstrip() for c, k in kinds)
        conn.execute(f"CREATE TABLE {quote(table)} ({columns}) WITHOUT ROWID")

    async def drop_table(self, conn: sqlite3.Connection, table: str) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")
        conn.execute("DELETE FROM factbus_sidecar_leaves WHERE tbl = ?", (table,))
        conn.execute("DELETE FROM factbus_sidecar_hiders WHERE tbl = ?", (table,))

    async def swap_table(self, conn: sqlite3.Connection, new: str, table: str) -> None:
        await self.drop_table(conn, table)
        conn.execute(f"ALTER TABLE {quote(new)} RENAME TO {quote(table)}")
        conn.execute("UPDATE factbus_sidecar_leaves SET tbl = ? WHERE tbl = ?", (table, new))
        conn.execute("UPDATE factbus_sidecar_hiders SET tbl = ? WHERE tbl = ?", (table, new))

    async def definitions(self, conn: sqlite3.Connection) -> dict[str, str]:
        return dict(conn.execute("SELECT name, definition FROM factbus_sidecar_tables"))

    async def set_definition(self, conn: sqlite3.Connection, table: str, definition: str) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO factbus_sidecar_tables (name, definition) VALUES (?, ?)",
            (table, definition),
        )

    async def archive_page(
        self, conn: sqlite3.Connection, after: int, limit: int
    ) -> list[tuple[int, Fact]]:
        rows = conn.execute(
            "SELECT seq, body FROM factbus_sidecar_facts WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(seq, fact_from_bytes(body)) for seq, body in rows]

    async def archive_count(self, conn: sqlite3.Connection) -> int:
        count: int = conn.execute("SELECT COUNT(*) FROM factbus_sidecar_facts").fetchone()[0]
        return count

    async def closure(self, conn: sqlite3.Connection, refs: Collection[FactRef]) -> list[Fact]:
        return await _closure(self._load, conn, refs)

    async def successors(
        self, conn: sqlite3.Connection, ref: FactRef, role: str, fact_type: str
    ) -> list[FactRef]:
        rows = conn.execute(
            "SELECT f.hash, f.body FROM factbus_sidecar_edges e JOIN factbus_sidecar_facts f "
            "ON f.seq = e.successor WHERE e.key = ? AND e.role = ? "
            "AND e.predecessor_type = ? AND f.type = ? ORDER BY e.successor",
            (hash_key(ref.hash), role, ref.type, fact_type),
        )
        out: list[FactRef] = []
        for fact_hash, body in rows:
            fact = fact_from_bytes(body)
            pred = fact.predecessors.get(role)
            if pred == ref or (isinstance(pred, tuple) and ref in pred):
                out.append(FactRef(fact_type, fact_hash))
        return out


# -- PostgreSQL --------------------------------------------------------------------


def _pg_cell(kind: Kind, value: Any) -> str | None:
    if kind == "candidates":
        return to_json(value)
    if value is None:
        return None
    if kind in ("key", "pred"):
        return value if isinstance(value, str) else to_json(value)
    return to_json(value)


_PG_TYPES: Final = {
    "key": 'text COLLATE "C" NOT NULL',
    "pred": "text",
    "value": "jsonb",
    "candidates": "jsonb NOT NULL DEFAULT '[]'",
}


class PostgresViewsDb:
    """Views in the store's PostgreSQL database (see the module docstring)."""

    dialect = "postgresql"

    def __init__(self, store_url: str) -> None:
        from factbus.store.postgres_config import PostgresConfig

        self.config = PostgresConfig.from_url(store_url)
        schema, prefix = self.config.schema, self.config.prefix
        self.schema = schema
        base = f"{quote(schema)}."
        self.facts = base + quote(f"{prefix}sidecar_facts")
        self.edges = base + quote(f"{prefix}sidecar_edges")
        self.leaves = base + quote(f"{prefix}sidecar_leaves")
        self.hiders = base + quote(f"{prefix}sidecar_hiders")
        self.tables = base + quote(f"{prefix}sidecar_tables")
        self._prefix = prefix
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Connect.

        :raises ConfigError: no schema of the URL's ``search_path`` exists.
        """
        if self._pool is not None:
            return
        import asyncpg

        config = self.config
        self._pool = await asyncpg.create_pool(
            config.dsn,
            min_size=1,
            max_size=max(2, config.pool_max),
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings={"application_name": "factbus-sidecar", "jit": "off"},
        )
        # The views and the outbox are unqualified: they go to the first schema of
        # the search_path that exists. None existing would fail later, at the first
        # CREATE TABLE, with PostgreSQL's "no schema has been selected to create in".
        if await self._pool.fetchval("SELECT current_schema()") is None:
            search_path = await self._pool.fetchval("SHOW search_path")
            await self.aclose()
            raise ConfigError(
                f"factbus.store: the views and the outbox go to the first schema of the "
                f"search_path ({search_path}), and none of them exists: create the schema "
                f"(CREATE SCHEMA ...) or name an existing one in the URL (?search_path=...)"
            )

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the sidecar's database is not open")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            yield conn

    async def create_bookkeeping(self, conn: Any) -> None:
        # One DDL at a time per schema + prefix (several processes may start at once).
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"factbus-sidecar-ddl {self.schema} {self._prefix}",
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
        await conn.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {self.facts} (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                hash text NOT NULL, type text NOT NULL, body bytea NOT NULL,
                UNIQUE (hash, type));
            CREATE TABLE IF NOT EXISTS {self.edges} (
                predecessor text NOT NULL, role text NOT NULL, successor bigint NOT NULL,
                predecessor_type text NOT NULL,
                PRIMARY KEY (predecessor, role, successor, predecessor_type));
            CREATE TABLE IF NOT EXISTS {self.leaves} (
                tbl text NOT NULL, col text NOT NULL, entity text NOT NULL, leaf text NOT NULL,
                value text NOT NULL, PRIMARY KEY (tbl, entity, col, leaf));
            CREATE TABLE IF NOT EXISTS {self.hiders} (
                tbl text NOT NULL, row text NOT NULL, hider text NOT NULL,
                PRIMARY KEY (tbl, row, hider));
            CREATE TABLE IF NOT EXISTS {self.tables} (
                name text PRIMARY KEY, definition text NOT NULL);
            """
        )

    async def tune_writer(self, conn: Any) -> None:
        return None

    async def lock_archive(self, conn: Any) -> None:
        # Writers append to the archive first thing in their flush: they wait here.
        await conn.execute(f"LOCK TABLE {self.facts} IN SHARE ROW EXCLUSIVE MODE")

    async def archive(self, conn: Any, facts: Sequence[Fact]) -> None:
        rows = await conn.fetch(
            f"INSERT INTO {self.facts} (hash, type, body) "
            "SELECT h, t, b FROM unnest($1::text[], $2::text[], $3::bytea[]) "
            "WITH ORDINALITY AS u(h, t, b, i) ORDER BY i ON CONFLICT DO NOTHING "
            "RETURNING seq, hash, type",
            [f.hash for f in facts],
            [f.type for f in facts],
            [f.wire_bytes() for f in facts],
        )
        edges = edges_of(facts, {(h, t): seq for seq, h, t in rows})
        if edges:
            columns = list(zip(*edges, strict=True))
            await conn.execute(
                f"INSERT INTO {self.edges} (predecessor, role, successor, predecessor_type) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) "
                "ON CONFLICT DO NOTHING",
                *[list(c) for c in columns],
            )

    async def _load(self, conn: Any, refs: Collection[FactRef]) -> dict[FactRef, tuple[int, Fact]]:
        if not refs:
            return {}
        refs = list(refs)
        rows = await conn.fetch(
            f"SELECT f.seq, f.body FROM unnest($1::text[], $2::text[]) AS u(h, t) "
            f"JOIN {self.facts} f ON f.hash = u.h AND f.type = u.t",
            [r.hash for r in refs],
            [r.type for r in refs],
        )
        out: dict[FactRef, tuple[int, Fact]] = {}
        for seq, body in rows:
            fact = fact_from_bytes(body)
            out[fact.ref] = (seq, fact)
        return out

    async def load_bodies(self, conn: Any, refs: Collection[FactRef]) -> dict[FactRef, Fact]:
        return {ref: fact for ref, (_, fact) in (await self._load(conn, refs)).items()}

    async def load_state(
        self,
        conn: Any,
        state: State,
        leaves: Collection[tuple[str, str]],
        hiders: Collection[tuple[str, str]],
    ) -> None:
        if leaves:
            for key in leaves:
                state.leaves.setdefault(key, {})
            rows = await conn.fetch(
                f"SELECT l.tbl, l.entity, l.col, l.leaf, l.value "
                f"FROM unnest($1::text[], $2::text[]) AS u(t, e) "
                f"JOIN {self.leaves} l ON l.tbl = u.t AND l.entity = u.e",
                *columnwise(leaves),
            )
            for tbl, entity, col, leaf, value in rows:
                state.leaves[(tbl, entity)].setdefault(col, {})[leaf] = orjson.loads(value)
        if hiders:
            state.hiders.update((key, set()) for key in hiders)
            rows = await conn.fetch(
                f"SELECT h.tbl, h.row, h.hider FROM unnest($1::text[], $2::text[]) AS u(t, r) "
                f"JOIN {self.hiders} h ON h.tbl = u.t AND h.row = u.r",
                *columnwise(hiders),
            )
            for tbl, row, hider in rows:
                state.hiders[(tbl, row)].add(hider)

    async def write(
        self, conn: Any, kinds: Mapping[str, list[tuple[str, Kind]]], writes: Writes
    ) -> None:
        bookkeeping: list[tuple[Sequence[Sequence[str]], str]] = [
            (
                writes.leaves_dropped,
                f"DELETE FROM {self.leaves} l USING unnest($1::text[], $2::text[], $3::text[], "
                "$4::text[]) AS u(t, c, e, f) "
                "WHERE l.tbl = u.t AND l.col = u.c AND l.entity = u.e AND l.leaf = u.f",
            ),
            (
                writes.leaves_added,
                f"INSERT INTO {self.leaves} (tbl, col, entity, leaf, value) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) "
                "ON CONFLICT DO NOTHING",
            ),
            (
                writes.hiders_dropped,
                f"DELETE FROM {self.hiders} h USING unnest($1::text[], $2::text[], $3::text[]) "
                "AS u(t, r, x) WHERE h.tbl = u.t AND h.row = u.r AND h.hider = u.x",
            ),
            (
                writes.hiders_added,
                f"INSERT INTO {self.hiders} (tbl, row, hider) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            ),
        ]
        for records, statement in bookkeeping:
            if records:
                await conn.execute(statement, *columnwise(records))
        for table, keys in writes.deleted.items():
            await conn.execute(f"DELETE FROM {quote(table)} WHERE hash = ANY($1::text[])", keys)
        for table, rows in writes.rows.items():
            columns = kinds[table]
            names = ", ".join(quote(c) for c, _ in columns)
            params = ", ".join(f"${i + 1}::text[]" for i in range(len(columns)))
            aliases = ", ".join(f"c{i}" for i in range(len(columns)))
            select = ", ".join(
                f"u.c{i}::jsonb" if k in ("value", "candidates") else f"u.c{i}"
                for i, (_, k) in enumerate(columns)
            )
            update = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c, _ in columns[1:])
            conflict = f"DO UPDATE SET {update}" if update else "DO NOTHING"
            await conn.execute(
                f"INSERT INTO {quote(table)} ({names}) SELECT {select} "
                f"FROM unnest({params}) AS u({aliases}) ON CONFLICT (hash) {conflict}",
                *[[_pg_cell(k, row[c]) for _, row in rows] for c, k in columns],
            )
        for (table, column), updates in writes.updates.items():
            kind = dict(kinds[table])[column]
            cast = "::jsonb" if kind == "value" else ""
            await conn.execute(
                f"UPDATE {quote(table)} t SET {quote(column)} = u.v{cast}, "
                f"{quote(column + '_candidates')} = u.c::jsonb "
                "FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k, v, c) WHERE t.hash = u.k",
                [k for k, _, _ in updates],
                [_pg_cell(kind, v) for _, v, _ in updates],
                [to_json(c) for _, _, c in updates],
            )

    @staticmethod
    def _decode(kinds: list[tuple[str, Kind]], row: Sequence[Any]) -> dict[str, Any]:
        return {
            name: orjson.loads(value)
            if value is not None and kind in ("value", "candidates")
            else value
            for (name, kind), value in zip(kinds, row, strict=True)
        }

    async def read_rows(
        self, conn: Any, table: str, kinds: list[tuple[str, Kind]], keys: Collection[str]
    ) -> dict[str, dict[str, Any]]:
        names = ", ".join(quote(c) for c, _ in kinds)
        rows = await conn.fetch(
            f"SELECT {names} FROM {quote(table)} WHERE hash = ANY($1::text[])", list(keys)
        )
        return {row[0]: self._decode(kinds, row) for row in rows}

    async def page_rows(
        self, conn: Any, table: str, kinds: list[tuple[str, Kind]], limit: int, after: str | None
    ) -> list[dict[str, Any]]:
        names = ", ".join(quote(c) for c, _ in kinds)
        rows = await conn.fetch(
            f"SELECT {names} FROM {quote(table)} WHERE hash > $1 ORDER BY hash LIMIT $2",
            after or "",
            limit,
        )
        return [self._decode(kinds, row) for row in rows]

    async def table_columns(self, conn: Any, table: str) -> list[str] | None:
        rows = await conn.fetch(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass($1) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            quote(table),
        )
        return [r[0] for r in rows] or None

    async def create_table(self, conn: Any, table: str, kinds: list[tuple[str, Kind]]) -> None:
        columns = ", ".join(f"{quote(c)} {_PG_TYPES[k]}" for c, k in kinds)
        await conn.execute(
            f"CREATE TABLE {quote(table)} ({columns}, "
            f"CONSTRAINT {quote(table + '_pkey')} PRIMARY KEY (hash))"
        )

    async def drop_table(self, conn: Any, table: str) -> None:
        await conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")
        await conn.execute(f"DELETE FROM {self.leaves} WHERE tbl = $1", table)
        await conn.execute(f"DELETE FROM {self.hiders} WHERE tbl = $1", table)

    async def swap_table(self, conn: Any, new: str, table: str) -> None:
        await self.drop_table(conn, table)
        await conn.execute(f"ALTER TABLE {quote(new)} RENAME TO {quote(table)}")
        await conn.execute(
            f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(new + '_pkey')} "
            f"TO {quote(table + '_pkey')}"
        )
        await conn.execute(f"UPDATE {self.leaves} SET tbl = $1 WHERE tbl = $2", table, new)
        await conn.execute(f"UPDATE {self.hiders} SET tbl = $1 WHERE tbl = $2", table, new)

    async def definitions(self, conn: Any) -> dict[str, str]:
        rows = await conn.fetch(f"SELECT name, definition FROM {self.tables}")
        return {row[0]: row[1] for row in rows}

    async def set_definition(self, conn: Any, table: str, definition: str) -> None:
        await conn.execute(
            f"INSERT INTO {self.tables} (name, definition) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition",
            table,
            definition,
        )

    async def archive_page(self, conn: Any, after: int, limit: int) -> list[tuple[int, Fact]]:
        rows = await conn.fetch(
            f"SELECT seq, body FROM {self.facts} WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            limit,
        )
        return [(seq, fact_from_bytes(body)) for seq, body in rows]

    async def archive_count(self, conn: Any) -> int:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {self.facts}")
        return count

    async def closure(self, conn: Any, refs: Collection[FactRef]) -> list[Fact]:
        return await _closure(self._load, conn, refs)

    async def successors(self, conn: Any, ref: FactRef, role: str, fact_type: str) -> list[FactRef]:
        rows = await conn.fetch(
            f"SELECT f.hash FROM {self.edges} e JOIN {self.facts} f ON f.seq = e.successor "
            f"WHERE e.predecessor = $1 AND e.role = $2 AND e.predecessor_type = $3 "
            f"AND f.type = $4 ORDER BY e.successor",
            ref.hash,
            role,
            ref.type,
            fact_type,
        )
        return [FactRef(fact_type, row[0]) for row in rows]


async def _closure(
    load: Callable[[Any, Collection[FactRef]], Awaitable[dict[FactRef, tuple[int, Fact]]]],
    conn: Any,
    refs: Collection[FactRef],
) -> list[Fact]:
    """``refs`` and their archived ancestors, in ``seq`` order: one query per
    generation (the archive keeps no successor-to-predecessor index)."""
    found: dict[FactRef, tuple[int, Fact]] = {}
    frontier = set(refs)
    while frontier:
        loaded = await load(conn, frontier)
        found.update(loaded)
        frontier = {
            pred
            for _, fact in loaded.values()
            for pred in fact.predecessor_refs()
            if pred not in found
        }
    return [fact for _, fact in sorted(found.values(), key=lambda item: item[0])]
