"""Shared pieces of the sidecar HTTP tests: broker URLs, a fresh PostgreSQL
database per test, and sidecar configurations for the shop example's views."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import httpx
import orjson

from factbus.fact import Fact, FactRef
from factbus.sidecar.config import parse_config
from factbus.sidecar.service import Sidecar
from factbus.testing import shop
from factbus.testing.brokers import broker_url, unique
from factbus.testing.polling import eventually


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "fbhttp") -> AsyncIterator[str]:
    """A PostgreSQL database of its own (the app's database), dropped afterwards."""
    base = broker_url("postgres")
    name = unique(prefix, "_")
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(base)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def shop_document(
    transport: str, store: str, topic: str, node: str, *, outbox: str | None = None
) -> dict[str, Any]:
    """A parsed sidecar.toml: orders with a convergent status, hidden once cancelled
    (examples/shop/sidecar.toml's views)."""
    return shop.shop_document(transport, store, topic, node, customers=True, outbox=outbox)


# -- running sidecars and talking to them -------------------------------------------


@contextlib.asynccontextmanager
async def running(document: dict[str, Any]) -> AsyncIterator[tuple[Sidecar, httpx.AsyncClient]]:
    """A started sidecar on an ephemeral port and an httpx client for it."""
    sidecar = Sidecar(parse_config(document), listen="127.0.0.1:0")
    async with sidecar:
        assert sidecar.url is not None
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as client:
            yield sidecar, client


def fact_path(fact: Fact) -> str:
    return f"/facts/{fact.type}/{quote(fact.hash, safe='')}"


def wire(fact: Fact) -> dict[str, Any]:
    """The POST body form of ``fact`` (predecessors by reference)."""
    body = fact.to_wire()
    del body["hash"]
    body["fields"] = _plain(body["fields"])
    return dict(body)


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


async def rows(client: httpx.AsyncClient, table: str) -> list[dict[str, Any]]:
    response = await client.get(f"/tables/{table}", params={"limit": 1000})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["rows"]
    return found


async def state(sidecar: Sidecar, client: httpx.AsyncClient) -> tuple[int, Any, Any]:
    """What a refused request must not change: archive size and every table."""
    await sidecar.bus.drain()
    return (
        await sidecar.archive.count(),
        await rows(client, "orders"),
        await rows(client, "customers"),
    )


async def exercise_api(sidecar: Sidecar, client: httpx.AsyncClient) -> None:
    """The API round trip every transport/store pair runs: write, read, refuse, stream."""
    customer = Fact("Shop.Customer", {"email": f"{unique('ada')}@example.com"})
    order = Fact("Shop.Order", {"number": 7}, {"customer": customer})
    async with client.stream("GET", "/tables/orders/changes") as stream:
        lines = stream.aiter_lines()
        assert await anext(lines) == ": connected"
        created = await client.post(
            "/facts",
            json={
                "facts": [
                    {
                        "type": "Shop.Order",
                        "fields": {"number": 7},
                        "predecessors": {
                            "customer": {
                                "type": "Shop.Customer",
                                "fields": {"email": customer.fields["email"]},
                            }
                        },
                    }
                ]
            },
        )
        assert created.status_code == 201, created.text
        assert created.json() == {"hashes": [order.hash]}
        event = await _next_event(lines)
        assert event["op"] == "added"
        assert event["key"] == order.hash
        assert event["row"]["customer"] == customer.hash

    async def has_order() -> bool:
        return any(r["hash"] == order.hash for r in await rows(client, "orders"))

    await eventually(has_order, what="the order's row")
    got = await client.get(fact_path(order))
    assert got.status_code == 200
    assert got.json() == orjson_roundtrip(order)
    before = await state(sidecar, client)
    bad = await client.post(
        "/facts", json={"facts": [{"type": "Shop.Order", "fields": {"n": 2**60}}]}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "facts[0].fields.n"
    bad = await client.post("/facts", content=b'{"facts": [')
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "malformed-json"
    assert (await client.get("/tables/nope")).status_code == 404
    assert await state(sidecar, client) == before
    exported = await client.get("/facts", params={"after": 0, "limit": 5000})
    hashes = [f["hash"] for f in exported.json()["facts"]]
    assert hashes.index(customer.hash) < hashes.index(order.hash)


def orjson_roundtrip(fact: Fact) -> Any:
    return orjson.loads(fact.wire_bytes())


async def _next_event(lines: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The next ``data:`` payload of an event stream (skipping comments)."""
    async with asyncio.timeout(timeout):
        event: str | None = None
        async for line in lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data: dict[str, Any] = orjson.loads(line[6:])
                assert data["op"] == event
                return data
    raise AssertionError("the event stream ended")


next_event = _next_event


def nested(fact: Fact) -> dict[str, Any]:
    """The POST body form of ``fact`` with predecessors given as Fact nested in full."""
    given = {a.ref: a for a in fact.ancestors_given}
    body: dict[str, Any] = {"type": fact.type, "fields": _plain(fact.fields), "predecessors": {}}
    for role, value in fact.predecessors.items():
        refs = [value] if isinstance(value, FactRef) else list(value)
        parts = [nested(given[r]) if r in given else {"type": r.type, "hash": r.hash} for r in refs]
        body["predecessors"][role] = parts[0] if isinstance(value, FactRef) else parts
    return body


async def readyz_waits_for_the_backlog(
    document: dict[str, Any], backlog: int, quiet: float
) -> None:
    """A sidecar on ``document`` whose node has ``backlog`` Shop.Customer facts
    waiting on its topic, and a handler that holds them: ``/healthz`` answers 200
    at once, ``/readyz`` 503 "not ready" after ``quiet`` seconds (longer than the
    readiness quiet period) and 200 once the handler is let go, every fact then
    archived."""
    sidecar = Sidecar(parse_config(document), listen="127.0.0.1:0")
    gate = asyncio.Event()

    @sidecar.bus.handler("Shop.Customer")
    async def hold(fact: Fact) -> None:
        await gate.wait()  # the backlog cannot be handled until the test says so

    async with sidecar, httpx.AsyncClient(base_url=str(sidecar.url)) as client:
        assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(quiet)
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "not ready"
        gate.set()

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, what="/readyz to answer 200", timeout=60)
        assert await sidecar.archive.count() == backlog
