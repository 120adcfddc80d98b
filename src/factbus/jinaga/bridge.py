"""A bridge between a factbus bus and an unmodified jinaga-server (docs/jinaga.md).

Push: every fact the bridge's bus handles is appended to the sidecar's
:class:`~factbus.sidecar.archive.FactArchive` in the bridge's store, in the same
transaction as its handled mark, with an increasing ``seq`` (handling order is
causal, so ``seq`` order is topological). A push loop reads the archive after
its push cursor, in ``seq`` order and in batches, and saves those facts to the
server with ``POST /save`` in the graph format (``application/x-jinaga-graph-v1``);
a graph names predecessors by position in the same body, so each body carries
the batch's facts plus every ancestor of theirs (the archive's closure), each
once, ancestors first. The push cursor (key ``push`` in
``<prefix>jinaga_bookmarks``) moves past a batch once the server answered 201;
until then the batch is retried (with back-off), so a fact reaches the server
at least once and the server deduplicates.

Pull: for each configured feed (root fact, successor type, role) the bridge
registers the specification with ``POST /feeds``, reads ``GET /feeds/{id}``
pages from the kept bookmark, loads the facts with ``POST /load`` (ancestors
included, predecessors first), recomputes every hash (a fact whose hash differs
from the one the server gave fails the page, which is retried and logged), and
publishes the facts not pulled before on the bus. The refs it published go to
``<prefix>jinaga_pulled`` and the feed's bookmark to ``<prefix>jinaga_bookmarks``
in one transaction after the broker confirmed, so a restart resumes after the
last page published; a crash between the broker's confirmation and that commit
republishes that page's facts once more (consumers deduplicate them).

Echoes: a fact the bridge pulled from the server (recorded in
``<prefix>jinaga_pulled``, or being published by a pull in flight) is skipped by
the push loop, so it is not saved back (it would be harmless: the server
deduplicates too).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from factbus.bus import Bus
from factbus.config import Settings
from factbus.dispatcher import ANY_TYPE, current_transaction
from factbus.errors import ConfigError, FactbusError, MissingDriver
from factbus.fact import Fact, FactRef
from factbus.jinaga.graph import CONTENT_TYPE_GRAPH, JinagaFormatError, fact_records, write_graph
from factbus.lifecycle import AsyncLifecycle
from factbus.sidecar.archive import FactArchive
from factbus.store import sql_dialect
from factbus.urls import redact

try:
    import httpx
except ImportError as _error:  # pragma: no cover - exercised by `make core-only`
    raise MissingDriver("http", "jinaga", _error) from _error

log = structlog.get_logger("factbus.jinaga.bridge")

_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_JINAGA_KEYS = frozenset(
    {"url", "node", "store", "push", "feed", "poll_interval", "batch_size", "timeout"}
)
_FEED_KEYS = frozenset({"root", "successor", "role"})


class BridgeError(FactbusError):
    """The server answered something the bridge cannot use (bad status, bad JSON, a
    fact whose hash does not match)."""


@dataclass(frozen=True, slots=True)
class Feed:
    """Follow the facts of type ``successor`` whose predecessor ``role`` is ``root``."""

    root: FactRef
    successor: str
    role: str

    @property
    def key(self) -> str:
        """Stable name of this feed in the bookmark table."""
        return f"{self.root.type}#{self.root.hash}/{self.successor}.{self.role}"

    def specification(self) -> str:
        """The specification text jinaga.js would send for
        ``model.given(Root).match(r => r.successors(Successor, s => s.role))``."""
        return (
            f"let p1: {self.root.type} = #{self.root.hash}\n"
            f"(p1: {self.root.type}) {{\n"
            f"    u1: {self.successor} [\n"
            f"        u1->{self.role}: {self.root.type} = p1\n"
            f"    ]\n"
            f"}} => u1\n"
        )


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """The ``[jinaga]`` table of the TOML file, plus the bus settings of ``[factbus]``."""

    url: str
    """The server's replicator URL, e.g. ``http://127.0.0.1:8091/jinaga``."""
    settings: Settings
    """Bus settings: ``[factbus]`` with ``node`` and ``store`` replaced by the bridge's own."""
    feeds: tuple[Feed, ...] = ()
    push: bool = True
    poll_interval: float = 1.0
    batch_size: int = 200
    timeout: float = 30.0


def load_bridge_config(path: str | Path) -> BridgeConfig:
    """Read the TOML file ``path``: ``[factbus]`` and ``[jinaga]``.

    :raises ConfigError: missing ``[jinaga]`` table or ``url``, unknown key,
        wrong type, bad type or role name (naming the TOML key).
    """
    try:
        with Path(path).open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    return parse_bridge_config(document)


def parse_bridge_config(document: Mapping[str, Any]) -> BridgeConfig:
    """:func:`load_bridge_config` on an already parsed document."""
    table = document.get("jinaga")
    if not isinstance(table, Mapping):
        raise ConfigError("[jinaga]: the table is missing (it needs at least url)")
    unknown = set(table) - _JINAGA_KEYS
    if unknown:
        raise ConfigError(f"[jinaga]: unknown keys {', '.join(sorted(unknown))}")
    url = table.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"jinaga.url: an http(s) URL is needed, not {redact(str(url))!r}")
    factbus = document.get("factbus", {})
    if not isinstance(factbus, Mapping):
        raise ConfigError("[factbus]: must be a table")
    base = Settings.load(None, **dict(factbus))
    node = _string(table, "node", f"{base.node_name}-jinaga-bridge")
    store = _string(table, "store", "")
    settings = Settings.load(None, **{**dict(factbus), "node": node, "store": store})
    feeds = table.get("feed", [])
    if not isinstance(feeds, list):
        raise ConfigError("jinaga.feed: use [[jinaga.feed]] tables")
    return BridgeConfig(
        url=url.rstrip("/"),
        settings=settings,
        feeds=tuple(_feed(i, f) for i, f in enumerate(feeds)),
        push=_typed(table, "push", bool, True),
        poll_interval=_positive(table, "poll_interval", 1.0),
        batch_size=int(_positive(table, "batch_size", 200)),
        timeout=_positive(table, "timeout", 30.0),
    )


def _string(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"jinaga.{key}: must be a string, not {value!r}")
    return value


def _typed(table: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise ConfigError(f"jinaga.{key}: must be a {kind.__name__}, not {value!r}")
    return value


def _positive(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"jinaga.{key}: must be a positive number, not {value!r}")
    return float(value)


def _feed(index: int, table: Any) -> Feed:
    where = f"jinaga.feed[{index}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - _FEED_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    successor, role, root = table.get("successor"), table.get("role"), table.get("root")
    if not isinstance(successor, str) or not _TYPE_NAME.match(successor):
        raise ConfigError(f"{where}.successor: a fact type name is needed, not {successor!r}")
    if not isinstance(role, str) or not _ROLE_NAME.match(role):
        raise ConfigError(f"{where}.role: a role name (letters, digits, _) is needed, not {role!r}")
    if not isinstance(root, Mapping):
        raise ConfigError(f"{where}.root: use {{type = ..., fields = {{...}}}} or {{type, hash}}")
    root_type = root.get("type")
    if not isinstance(root_type, str) or not _TYPE_NAME.match(root_type):
        raise ConfigError(f"{where}.root.type: a fact type name is needed, not {root_type!r}")
    extra = set(root) - {"type", "fields", "hash"}
    if extra or ("hash" in root) == ("fields" in root):
        raise ConfigError(f"{where}.root: give type and either fields or hash")
    if "hash" in root:
        digest = root["hash"]
        if not isinstance(digest, str) or len(digest) != 88:
            raise ConfigError(f"{where}.root.hash: an 88-character hash is needed")
        ref = FactRef(root_type, digest)
    else:
        fields = root["fields"]
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{where}.root.fields: must be a table")
        try:
            ref = Fact(root_type, fields).ref
        except FactbusError as error:
            raise ConfigError(f"{where}.root.fields: {error}") from None
    return Feed(ref, successor, role)


# --------------------------------------------------------------------------- state


PUSH_KEY = "push"
"""The bookmark under which the push cursor (an archive ``seq``) is kept; feed
keys contain ``#`` and ``@``, so they never equal it."""


class _State(Protocol):
    """The bridge's pull-side tables (pulled refs, bookmarks) in its store's
    database, through a connection of its own. The facts themselves are in the
    store's :class:`~factbus.sidecar.archive.FactArchive`."""

    async def open(self) -> None: ...
    async def aclose(self) -> None: ...
    async def pulled(self, refs: Iterable[FactRef]) -> set[FactRef]: ...
    async def record_page(self, feed: str, bookmark: str, refs: Sequence[FactRef]) -> None: ...
    async def bookmark(self, feed: str) -> str: ...


class _SqliteState:
    """SQLite: its own connection, used from a worker thread (the bus's connection may
    hold the write lock while a handler awaits; waiting for it on the event loop's
    thread would stall the bus)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, func: Any, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(func, *args)

    async def open(self) -> None:
        def create() -> sqlite3.Connection:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS factbus_jinaga_pulled (
                    hash TEXT NOT NULL, type TEXT NOT NULL, PRIMARY KEY (hash, type));
                CREATE TABLE IF NOT EXISTS factbus_jinaga_bookmarks (
                    feed TEXT PRIMARY KEY, bookmark TEXT NOT NULL);
                """
            )
            return db

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = await self._run(create)

    async def aclose(self) -> None:
        if self.db is not None:
            await self._run(self.db.close)
            self.db = None

    def _db(self) -> sqlite3.Connection:
        if self.db is None:
            raise RuntimeError("the bridge state is not open")
        return self.db

    def _write(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def pulled(self, refs: Iterable[FactRef]) -> set[FactRef]:
        wanted = list(refs)

        def read() -> set[FactRef]:
            db = self._db()
            sql = "SELECT 1 FROM factbus_jinaga_pulled WHERE hash = ? AND type = ?"
            return {ref for ref in wanted if db.execute(sql, (ref.hash, ref.type)).fetchone()}

        result: set[FactRef] = await self._run(read)
        return result

    async def record_page(self, feed: str, bookmark: str, refs: Sequence[FactRef]) -> None:
        keys = [(r.hash, r.type) for r in refs]
        await self._run(
            self._write,
            [
                ("INSERT OR IGNORE INTO factbus_jinaga_pulled VALUES (?, ?)", keys),
                (
                    "INSERT INTO factbus_jinaga_bookmarks VALUES (?, ?) "
                    "ON CONFLICT (feed) DO UPDATE SET bookmark = excluded.bookmark",
                    [(feed, bookmark)],
                ),
            ],
        )

    async def bookmark(self, feed: str) -> str:
        def read() -> str:
            row = (
                self._db()
                .execute("SELECT bookmark FROM factbus_jinaga_bookmarks WHERE feed = ?", (feed,))
                .fetchone()
            )
            return str(row[0]) if row else ""

        result: str = await self._run(read)
        return result


class _PostgresState:
    def __init__(self, url: str) -> None:
        from factbus.store.postgres_config import PostgresConfig

        config = PostgresConfig.from_url(url)
        self.dsn = config.dsn
        self.t = f'"{config.schema}"."{config.prefix}jinaga_'
        self.schema = config.schema
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        t = self.t
        async with self.pool.acquire() as conn:
            await conn.execute(
                f'CREATE SCHEMA IF NOT EXISTS "{self.schema}";'
                f'CREATE TABLE IF NOT EXISTS {t}pulled" (hash TEXT NOT NULL, '
                "type TEXT NOT NULL, PRIMARY KEY (hash, type));"
                f'CREATE TABLE IF NOT EXISTS {t}bookmarks" (feed TEXT PRIMARY KEY, '
                "bookmark TEXT NOT NULL);"
            )

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def pulled(self, refs: Iterable[FactRef]) -> set[FactRef]:
        refs = list(refs)
        rows = await self.pool.fetch(
            f'SELECT p.hash, p.type FROM {self.t}pulled" p '
            "JOIN unnest($1::text[], $2::text[]) AS r(hash, type) USING (hash, type)",
            [r.hash for r in refs],
            [r.type for r in refs],
        )
        return {FactRef(r["type"], r["hash"]) for r in rows}

    async def record_page(self, feed: str, bookmark: str, refs: Sequence[FactRef]) -> None:
        t = self.t
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                f'INSERT INTO {t}pulled" VALUES ($1, $2) ON CONFLICT DO NOTHING',
                [(r.hash, r.type) for r in refs],
            )
            await conn.execute(
                f'INSERT INTO {t}bookmarks" VALUES ($1, $2) '
                "ON CONFLICT (feed) DO UPDATE SET bookmark = excluded.bookmark",
                feed,
                bookmark,
            )

    async def bookmark(self, feed: str) -> str:
        value = await self.pool.fetchval(
            f'SELECT bookmark FROM {self.t}bookmarks" WHERE feed = $1', feed
        )
        return str(value) if value is not None else ""


def _open_state(store_url: str) -> _State:
    dialect = sql_dialect(store_url)
    if dialect == "sqlite":
        from factbus.store.sqlite import sqlite_path

        path = str(sqlite_path(store_url))
        if path == ":memory:":
            raise ConfigError("jinaga-bridge needs a store on disk, not an in-memory SQLite")
        return _SqliteState(path)
    if dialect == "postgresql":
        return _PostgresState(store_url)
    raise ConfigError(
        f"jinaga-bridge keeps its facts and bookmarks in a sqlite:// or postgresql:// store, "
        f"not {redact(store_url)}"
    )


# --------------------------------------------------------------------------- bridge


@dataclass(slots=True)
class BridgeStats:
    """What the bridge did since it started."""

    pushed: int = 0
    """Facts saved to the server (not counting the ancestors sent along)."""
    pulled: int = 0
    """Facts published on the bus from the server's feeds."""
    pages: int = 0
    errors: int = 0
    last_error: str = ""
    """The message of the last failed push batch or pull page."""
    feeds: dict[str, str] = field(default_factory=dict)
    """Feed key -> last bookmark kept."""


class JinagaBridge(AsyncLifecycle):
    """Push the bus's facts to a jinaga-server and pull its feeds onto the bus.

    ``async with JinagaBridge(config) as bridge:`` starts the bus (its catch-all
    handler keeps every fact for the push side), the push loop and one pull loop
    per feed; leaving the block stops them and closes the bus.
    """

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        settings = config.settings
        if not config.push:
            settings = Settings.load(None, **{**_as_dict(settings), "consume": False})
        self.bus = Bus(settings=settings)
        self.state = _open_state(settings.store_url)
        self.archive = FactArchive(settings.store_url)
        """The facts the bus handled, in ``seq`` order: the push queue."""
        self._push_cursor = 0
        self.stats = BridgeStats()
        self._pulling: set[FactRef] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._log = log.bind(server=config.url, node=settings.node_name)
        if config.push:
            self.archive.attach(self.bus)
            self.bus.handler(ANY_TYPE)(self._handled)

    def _handled(self, fact: Fact) -> None:
        current_transaction().after_commit(self._wake.set)  # the push loop sees it then

    async def _enter(self) -> None:
        await self.start()

    async def start(self) -> None:
        """Open the state and the archive, start the bus, the push loop and the pull
        loops."""
        await self.state.open()
        await self.archive.open()
        bookmark = await self.state.bookmark(PUSH_KEY)
        self._push_cursor = int(bookmark) if bookmark.isdigit() else 0
        self._http = httpx.AsyncClient(timeout=self.config.timeout)
        await self.bus.start()
        if self.config.push:
            self._tasks.append(asyncio.create_task(self._push_loop(), name="jinaga-push"))
        for feed in self.config.feeds:
            self._tasks.append(asyncio.create_task(self._pull_loop(feed), name="jinaga-pull"))

    async def aclose(self) -> None:
        """Stop the loops, close the bus, the state and the HTTP client.

        A page or batch in flight is finished first (up to ``timeout`` seconds; one
        still running then is abandoned and redone on the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.config.timeout)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        await self.bus.aclose()
        await self.archive.aclose()
        await self.state.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- push ---------------------------------------------------------------

    async def push_once(self) -> int:
        """Save the next batch of archived facts after the push cursor, except those
        pulled from the server, then move the cursor past it; return how many
        facts the cursor passed (0: none left).

        :raises BridgeError: the server did not answer 201 (the cursor stays).
        """
        facts, following = await self.archive.page(self._push_cursor, self.config.batch_size)
        if not facts:
            return 0
        pulled = await self.state.pulled(f.ref for f in facts)
        batch = [f.ref for f in facts if f.ref not in pulled and f.ref not in self._pulling]
        if batch:
            graph = await self.archive.closure(batch)  # ancestors first, each once
            response = await self._client().post(
                f"{self.config.url}/save",
                content=write_graph(graph),
                headers={"Content-Type": CONTENT_TYPE_GRAPH},
            )
            if response.status_code != 201:
                raise BridgeError(
                    f"POST /save answered {response.status_code}: {response.text[:300]}"
                )
            self._log.debug("pushed", facts=len(batch), graph=len(graph))
        await self.state.record_page(PUSH_KEY, str(following), [])
        self._push_cursor = following
        self.stats.pushed += len(batch)
        return len(facts)

    async def _pause(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, less if the bridge is stopping (or ``event`` is set)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((event or self._stopping).wait(), seconds)

    async def _push_loop(self) -> None:
        delay = self.config.poll_interval
        while not self._stopping.is_set():
            try:
                while not self._stopping.is_set() and await self.push_once():
                    pass
                delay = self.config.poll_interval
            except (BridgeError, httpx.HTTPError) as error:
                self.stats.errors += 1
                self.stats.last_error = f"push: {error}"
                self._log.warning("push failed, retrying", error=str(error), retry_in=delay)
                await self._pause(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._wake.clear()
            await self._pause(self.config.poll_interval, self._wake)

    # -- pull ---------------------------------------------------------------

    async def feed_ids(self, feed: Feed) -> list[str]:
        """Register ``feed``'s specification with ``POST /feeds``; its feed ids."""
        response = await self._client().post(
            f"{self.config.url}/feeds",
            content=feed.specification().encode(),
            headers={"Content-Type": "text/plain", "Accept": "application/json"},
        )
        ids = _json(response, "POST /feeds").get("feeds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BridgeError(f"POST /feeds: no feed list in {response.text[:300]}")
        return ids

    async def pull_once(self, feed: Feed, feed_id: str) -> int:
        """Read one page of ``feed_id`` after the kept bookmark, publish its new facts
        and keep the next bookmark; return the number of references on the page."""
        key = f"{feed.key}@{feed_id}"
        bookmark = await self.state.bookmark(key)
        response = await self._client().get(
            f"{self.config.url}/feeds/{feed_id}",
            params={"b": bookmark},
            headers={"Accept": "application/json"},
        )
        page = _json(response, f"GET /feeds/{feed_id}")
        refs, next_bookmark = page.get("references"), page.get("bookmark")
        if not isinstance(refs, list) or not isinstance(next_bookmark, str):
            raise BridgeError(f"GET /feeds/{feed_id}: unexpected page {response.text[:300]}")
        if not refs:
            return 0
        response = await self._client().post(
            f"{self.config.url}/load",
            json={"references": refs},
            headers={"Accept": "application/json"},
        )
        records = _json(response, "POST /load").get("facts")
        if not isinstance(records, list):
            raise BridgeError(f"POST /load: no fact list in {response.text[:300]}")
        try:
            facts = fact_records(records)
        except JinagaFormatError as error:
            raise BridgeError(f"POST /load: {error}") from None
        known = await self.state.pulled(f.ref for f in facts)
        new = [f for f in facts if f.ref not in known]
        if new:
            self._pulling.update(f.ref for f in new)
            await self.bus.publish(*new, ancestors=False)
        await self.state.record_page(key, next_bookmark, [f.ref for f in new])
        self._pulling.difference_update(f.ref for f in new)
        self.stats.pulled += len(new)
        self.stats.pages += 1
        self.stats.feeds[key] = next_bookmark
        self._log.debug("pulled", feed=key, references=len(refs), published=len(new))
        return len(refs)

    async def _pull_loop(self, feed: Feed) -> None:
        delay = self.config.poll_interval
        ids: list[str] = []
        while not self._stopping.is_set():
            try:
                if not ids:
                    ids = await self.feed_ids(feed)
                busy = False
                for feed_id in ids:
                    if self._stopping.is_set():
                        return
                    busy = await self.pull_once(feed, feed_id) > 0 or busy
                delay = self.config.poll_interval
                if busy:
                    continue
            except (BridgeError, httpx.HTTPError, FactbusError) as error:
                self.stats.errors += 1
                self.stats.last_error = f"pull {feed.key}: {error}"
                ids = []
                self._log.warning("pull failed, retrying", feed=feed.key, error=str(error))
                await self._pause(delay)
                delay = min(delay * 2, 30.0)
                continue
            await self._pause(self.config.poll_interval)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("the bridge is not started")
        return self._http


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise BridgeError(f"{what} answered {response.status_code}: {response.text[:300]}")
    try:
        value = response.json()
    except ValueError:
        raise BridgeError(f"{what}: not JSON: {response.text[:300]}") from None
    if not isinstance(value, dict):
        raise BridgeError(f"{what}: expected a JSON object, got {response.text[:300]}")
    return value


def _as_dict(settings: Settings) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(settings)
