"""The outbox: rows the app inserts in its own transaction become published facts;
bad rows move to ``<outbox>_errors`` with their reason and block nothing.
SQLite (polling) and PostgreSQL (LISTEN/NOTIFY), real Bus on a memory transport."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path

import asyncpg
import orjson
import pytest
from http_support import fresh_database

from factbus import Bus, Fact, FactRef
from factbus.errors import ConfigError
from factbus.sidecar.outbox import Outbox
from factbus.testing.polling import eventually

CUSTOMER = Fact("Shop.Customer", {"email": "ada@example.com"})
ORDER = Fact("Shop.Order", {"number": 1}, {"customer": CUSTOMER})
STRANGER = Fact("Shop.Customer", {"email": "nobody@example.com"})


def _rows() -> list[str]:
    """What the app inserts: bad rows first, so they must not block the good ones."""
    order_by_reference = {
        "type": "Shop.Order",
        "fields": {"number": 1},
        "predecessors": {"customer": {"type": CUSTOMER.type, "hash": CUSTOMER.hash}},
    }
    return [
        "{not json",
        orjson.dumps({"type": "Shop.Order", "fields": {"total": 2**60}}).decode(),
        orjson.dumps(
            {"type": "Shop.Order", "predecessors": {"customer": STRANGER.ref._asdict()}}
        ).decode(),
        orjson.dumps({"type": "Shop.Note", "fields": {"text": "x" * 1_100_000}}).decode(),
        orjson.dumps(CUSTOMER.to_wire()).decode(),
        orjson.dumps(order_by_reference).decode(),  # refers to the row above
    ]


async def _exercise(
    store: str,
    table: str,
    insert: Callable[[list[str]], Awaitable[None]],
    count: Callable[[str], Awaitable[int]],
    errors: Callable[[], Awaitable[list[tuple[str, str]]]],
) -> None:
    ns = f"memory://outbox-{uuid.uuid4().hex[:8]}"
    received: list[Fact] = []
    reader = Bus(ns, "memory://", topic="shop", node="reader")
    for fact_type in ("Shop.Customer", "Shop.Order"):
        reader.handler(fact_type)(received.append)
    async with reader, Bus(ns, store, topic="shop", node="writer", consume=False) as writer:

        async def publish(facts: Sequence[Fact]) -> list[str]:
            return [ref.hash for ref in await writer.publish(*facts)]

        async def unknown(refs: Collection[FactRef]) -> set[FactRef]:
            return set(refs) - await writer.store.published(refs)

        outbox = Outbox(table, store, publish, unknown)
        await outbox.start()
        try:
            await insert(_rows())

            async def published() -> bool:
                return not await count(table) and len(received) == 2

            await eventually(published, what="the outbox to be published")
        finally:
            await outbox.aclose()
        await reader.drain()
    assert sorted(f.hash for f in received) == sorted([CUSTOMER.hash, ORDER.hash])
    reasons = [reason for _, reason in await errors()]
    assert [r.split(":", 1)[0] for r in reasons] == [
        "malformed-json",
        "invalid-value",
        "unknown-predecessor",
        "too-large",
    ]
    assert "fact.fields.total" in reasons[1]
    assert "fact.predecessors.customer" in reasons[2]
    assert (await errors())[0][0] == "{not json"  # kept as inserted
    assert (outbox.published, outbox.failed) == (2, 4)


async def test_sqlite_outbox(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = f"sqlite:///{path}"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")

    async def insert(rows: list[str]) -> None:
        while True:  # the sidecar creates the table on start
            try:
                db.execute("BEGIN")
                db.execute("CREATE TABLE IF NOT EXISTS app_orders (n INTEGER)")
                db.execute("INSERT INTO app_orders VALUES (1)")
                db.executemany("INSERT INTO outbox (fact) VALUES (?)", [(r,) for r in rows])
                db.execute("COMMIT")
                return
            except sqlite3.OperationalError:
                db.execute("ROLLBACK")
                await asyncio.sleep(0.05)

    async def count(table: str) -> int:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    async def errors() -> list[tuple[str, str]]:
        return db.execute("SELECT fact, reason FROM outbox_errors ORDER BY id").fetchall()

    try:
        await _exercise(store, "outbox", insert, count, errors)
    finally:
        db.close()


@pytest.mark.broker("postgres")
async def test_postgres_outbox() -> None:
    async with fresh_database("fboutbox") as url:
        conn = await asyncpg.connect(url)

        async def insert(rows: list[str]) -> None:
            async with conn.transaction():
                await conn.execute("CREATE TABLE IF NOT EXISTS app_orders (n int)")
                await conn.execute("INSERT INTO app_orders VALUES (1)")
                await conn.executemany(
                    "INSERT INTO app.outbox (fact) VALUES ($1)", [(r,) for r in rows]
                )

        async def count(table: str) -> int:
            return int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}"))

        async def errors() -> list[tuple[str, str]]:
            records = await conn.fetch("SELECT fact, reason FROM app.outbox_errors ORDER BY id")
            return [(r["fact"], r["reason"]) for r in records]

        notified = asyncio.Event()  # the sidecar's trigger wakes LISTENers on insert
        await conn.add_listener("factbus_outbox_app_outbox", lambda *_: notified.set())
        try:
            await conn.execute("CREATE SCHEMA app")
            await _exercise(url, "app.outbox", insert, count, errors)
            assert notified.is_set()
        finally:
            await conn.close()


def test_outbox_names_and_stores_are_checked() -> None:
    async def publish(facts: Sequence[Fact]) -> list[str]:
        return []

    async def unknown(refs: Collection[FactRef]) -> set[FactRef]:
        return set()

    with pytest.raises(ConfigError, match="outbox"):
        Outbox("outbox; DROP TABLE x", "sqlite:///x.db", publish, unknown)
    with pytest.raises(ConfigError, match="memory://"):
        Outbox("outbox", "memory://", publish, unknown)
