"""The HTTP API and the outbox on real brokers (Kafka with SQLite and PostgreSQL
stores, RabbitMQ with PostgreSQL): a real client against the running server, as
on memory."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from http_support import (
    exercise_api,
    fresh_database,
    readyz_waits_for_the_backlog,
    rows,
    running,
    shop_document,
)

from factbus import Bus, Fact
from factbus.sidecar.service import Sidecar
from factbus.testing.brokers import broker_url, unique
from factbus.testing.polling import eventually


@contextlib.asynccontextmanager
async def kafka_topic() -> AsyncIterator[tuple[str, str]]:
    """(transport URL, a topic of its own; removed after the test by tests/conftest.py)."""
    url = broker_url("kafka")
    topic = unique("fbhttp")
    yield url, topic


async def _ready(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, what="/readyz", timeout=60)


async def _outbox_reaches_the_view(
    sidecar: Sidecar, client: httpx.AsyncClient, insert: object
) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    row = f'{{"type": "Shop.Customer", "fields": {{"email": "{email}"}}}}'
    await insert(row)  # type: ignore[operator]

    async def arrived() -> bool:
        return any(r["email"] == email for r in await rows(client, "customers"))

    await eventually(arrived, what="the outbox fact's row", timeout=60)
    expected = Fact("Shop.Customer", {"email": email})
    assert any(r["hash"] == expected.hash for r in await rows(client, "customers"))


@pytest.mark.broker("kafka")
async def test_kafka_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    async with kafka_topic() as (url, topic):
        document = shop_document(url, f"sqlite:///{path}", topic, unique("n"), outbox="outbox")
        async with running(document) as (sidecar, client):
            await _ready(client)
            await exercise_api(sidecar, client)

            async def insert(text: str) -> None:
                with sqlite3.connect(path, timeout=30) as db:
                    db.execute("INSERT INTO outbox (fact) VALUES (?)", (text,))

            await _outbox_reaches_the_view(sidecar, client, insert)


@pytest.mark.broker("kafka")
@pytest.mark.broker("postgres")
async def test_kafka_postgres() -> None:
    async with kafka_topic() as (url, topic), fresh_database() as store:
        document = shop_document(url, store, topic, unique("n"), outbox="outbox")
        async with running(document) as (sidecar, client):
            await _ready(client)
            await exercise_api(sidecar, client)

            async def insert(text: str) -> None:
                conn = await asyncpg.connect(store)
                try:
                    async with conn.transaction():  # the app's own transaction
                        await conn.execute("INSERT INTO outbox (fact) VALUES ($1)", text)
                finally:
                    await conn.close()

            await _outbox_reaches_the_view(sidecar, client, insert)


@pytest.mark.broker("kafka")
async def test_kafka_readyz_waits_for_the_backlog(tmp_path: Path) -> None:
    async with kafka_topic() as (url, topic):
        facts = [Fact("Shop.Customer", {"email": f"c{i}@example.com"}) for i in range(200)]
        async with Bus(url, "memory://", topic=topic, node=unique("till"), consume=False) as till:
            await till.publish(*facts)  # Kafka keeps them: the new node's backlog
        document = shop_document(url, f"sqlite:///{tmp_path / 'app.db'}", topic, unique("n"))
        await readyz_waits_for_the_backlog(document, len(facts), quiet=2.0)


@contextlib.asynccontextmanager
async def amqp_topic() -> AsyncIterator[tuple[str, str, str]]:
    """(transport URL, a topic of its own, a node); its exchanges and queues are
    removed after the test by tests/conftest.py."""
    url = broker_url("amqp")
    topic, node = unique("fbhttp"), unique("n")
    yield url, topic, node


@pytest.mark.broker("amqp")
@pytest.mark.broker("postgres")
async def test_rabbitmq_postgres() -> None:
    async with (
        amqp_topic() as (url, topic, node),
        fresh_database() as store,
        running(shop_document(url, store, topic, node)) as (sidecar, client),
    ):
        await _ready(client)
        await exercise_api(sidecar, client)
