"""A fact the application just wrote through the sidecar is known at once, even
while a pipeline step holds the store (so the published refs are not written
yet): a request naming it by reference is accepted, not refused as
``unknown-predecessor``. Real server (uvicorn on 127.0.0.1, ephemeral port), a
real httpx client, memory transport, SQLite store.

The window is made deterministically: a handler for a gate fact blocks inside
the pipeline's transaction (which holds the store lock) until the test releases
it, so every write in between happens while the step holds the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from http_support import running, shop_document, wire

from factbus import Fact
from factbus.jinaga.graph import fact_record
from factbus.sidecar.config import parse_config
from factbus.sidecar.service import Sidecar
from factbus.testing.polling import eventually

GATE = "Test.Gate"


@contextlib.asynccontextmanager
async def _gated(
    document: dict[str, Any],
) -> AsyncIterator[tuple[Sidecar, httpx.AsyncClient, asyncio.Event]]:
    """A running sidecar whose pipeline is inside a step (store lock held, its
    transaction open) until the test sets the event it is given."""
    sidecar = Sidecar(parse_config(document), listen="127.0.0.1:0")
    entered = asyncio.Event()
    release = asyncio.Event()

    @sidecar.bus.handler(GATE)
    async def gate(fact: Fact) -> None:
        entered.set()
        await release.wait()

    async with sidecar:
        assert sidecar.url is not None
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as client:
            await sidecar.bus.publish(Fact(GATE, {"run": uuid.uuid4().hex}))
            async with asyncio.timeout(30):
                await entered.wait()
            try:
                yield sidecar, client, release
            finally:
                release.set()


def _document(tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    document = shop_document(
        f"memory://published-{run}",
        f"sqlite:///{tmp_path / 'app.db'}",
        f"published-{run}",
        f"node-{run}",
    )
    document["sidecar"]["jinaga"] = "/jinaga"
    return document


async def test_a_fact_written_while_a_step_holds_the_store_is_a_known_predecessor(
    tmp_path: Path,
) -> None:
    customer = Fact("Shop.Customer", {"email": f"{uuid.uuid4().hex}@example.com"})
    order = Fact("Shop.Order", {"number": 1}, {"customer": customer})
    line = Fact("Shop.Order", {"number": 2}, {"customer": customer})
    async with _gated(_document(tmp_path)) as (sidecar, client, release):
        created = await client.post("/facts", json={"facts": [wire(customer)]})
        assert created.status_code == 201, created.text
        # The window: published and confirmed, neither handled nor recorded yet.
        assert await sidecar.bus.store.published([customer.ref]) == set()
        assert await sidecar.archive.get([customer.ref]) == {}

        named = await client.post("/facts", json={"facts": [wire(order)]})
        assert named.status_code == 201, named.text
        assert named.json() == {"hashes": [order.hash]}

        saved = await client.post("/jinaga/save", json={"facts": [fact_record(line)]})
        assert saved.status_code == 201, saved.text

        # Still the same window: nothing was recorded meanwhile.
        assert await sidecar.bus.store.published([customer.ref]) == set()
        assert await sidecar.bus.published([customer.ref]) == {customer.ref}

        # Once the step is over, the store records every published ref.
        release.set()
        await sidecar.bus.drain()
        recorded = await sidecar.bus.store.published([customer.ref, order.ref, line.ref])
        assert recorded == {customer.ref, order.ref, line.ref}


async def test_a_write_the_broker_confirmed_is_201_when_the_store_cannot_record_it(
    tmp_path: Path,
) -> None:
    """The store refuses to record published refs (a trigger aborts every insert
    into the SQLite store's published table): ``POST /facts`` still answers 201
    with the hashes, since the broker confirmed; the fact is a known predecessor
    at once, the failure shows in ``/metrics``, and the refs are recorded once
    the store accepts writes again."""
    document = _document(tmp_path)
    customer = Fact("Shop.Customer", {"email": f"{uuid.uuid4().hex}@example.com"})
    order = Fact("Shop.Order", {"number": 1}, {"customer": customer})
    async with running(document) as (sidecar, client):
        with sqlite3.connect(tmp_path / "app.db") as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON factbus_published "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        created = await client.post("/facts", json={"facts": [wire(customer)]})
        assert created.status_code == 201, created.text
        assert created.json() == {"hashes": [customer.hash]}
        named = await client.post("/facts", json={"facts": [wire(order)]})
        assert named.status_code == 201, named.text
        metrics = (await client.get("/metrics")).text
        failures = re.search(
            r"^factbus_publish_record_failures_total\{[^}]*\} (\S+)$", metrics, re.M
        )
        assert failures is not None, metrics
        assert float(failures.group(1)) >= 1
        assert await sidecar.bus.store.published([customer.ref]) == set()
        with sqlite3.connect(tmp_path / "app.db") as db:
            db.execute("DROP TRIGGER refuse")

        async def recorded() -> bool:
            refs = [customer.ref, order.ref]
            return await sidecar.bus.store.published(refs) == set(refs)

        await eventually(recorded, 30, "the published refs recorded")
