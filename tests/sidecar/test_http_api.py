"""The sidecar's HTTP API with a real client (httpx) against the running server on
127.0.0.1 (ephemeral port): memory transport, SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from http_support import (
    eventually,
    exercise_api,
    fact_path,
    nested,
    next_event,
    readyz_waits_for_the_backlog,
    rows,
    running,
    shop_document,
    state,
    wire,
)

from factbus import Bus, Fact
from factbus.sidecar.service import Sidecar

CUSTOMER = Fact("Shop.Customer", {"email": "ada@example.com"})
ORDER = Fact("Shop.Order", {"number": 1}, {"customer": CUSTOMER})


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return shop_document(
        f"memory://http-{run}", f"sqlite:///{tmp_path / 'app.db'}", f"shop-{run}", f"node-{run}"
    )


@pytest.fixture
async def api(document: dict[str, Any]) -> AsyncIterator[tuple[Sidecar, httpx.AsyncClient]]:
    async with running(document) as pair:
        yield pair


async def _post(client: httpx.AsyncClient, *facts: Fact) -> list[str]:
    response = await client.post("/facts", json={"facts": [wire(f) for f in facts]})
    assert response.status_code == 201, response.text
    hashes: list[str] = response.json()["hashes"]
    return hashes


async def test_round_trip_on_memory_and_sqlite(api: tuple[Sidecar, httpx.AsyncClient]) -> None:
    await exercise_api(*api)


async def test_facts_by_reference_and_fact_lookup(api: tuple[Sidecar, httpx.AsyncClient]) -> None:
    sidecar, client = api
    assert await _post(client, CUSTOMER, ORDER) == [CUSTOMER.hash, ORDER.hash]
    await sidecar.bus.drain()
    response = await client.get(fact_path(ORDER))
    assert response.status_code == 200
    assert response.json()["predecessors"] == {
        "customer": {"type": "Shop.Customer", "hash": CUSTOMER.hash}
    }
    missing = Fact("Shop.Order", {"number": 2}, {"customer": CUSTOMER})
    response = await client.get(fact_path(missing))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown-fact"
    response = await client.get("/facts/Shop.Order/not-a-hash")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid-reference")
    # Known now (handled): a later request may name the order by reference.
    status = Fact("Shop.Order.Status", {"value": "paid"}, {"order": ORDER, "prior": []})
    assert await _post(client, status) == [status.hash]


async def test_refusals_are_specific_and_change_nothing(
    api: tuple[Sidecar, httpx.AsyncClient],
) -> None:
    sidecar, client = api
    await _post(client, CUSTOMER, ORDER)
    before = await state(sidecar, client)
    stranger = Fact("Shop.Customer", {"email": "nobody@example.com"})
    cases: list[tuple[str, str, Any, int, str, str | None]] = [
        ("POST", "/facts", b"{oops", 400, "malformed-json", None),
        ("POST", "/facts", {"fact": []}, 400, "invalid-request", "fact"),
        ("POST", "/facts", {"facts": [{"type": ""}]}, 400, "invalid-fact", "facts[0].type"),
        (
            "POST",
            "/facts",
            # The first fact is fine: nothing of the request may be published.
            {
                "facts": [
                    wire(Fact("Shop.Customer", {"email": "x"})),
                    {"type": "T", "fields": {"a": [{"b": 2**60}]}},
                ]
            },
            400,
            "invalid-value",
            "facts[1].fields.a[0].b",
        ),
        (
            "POST",
            "/facts",
            {"facts": [wire(Fact("Shop.Order", {"number": 9}, {"customer": stranger}))]},
            400,
            "unknown-predecessor",
            "facts[0].predecessors.customer",
        ),
        (
            "POST",
            "/facts",
            {"facts": [{**wire(CUSTOMER), "hash": ORDER.hash}]},
            400,
            "hash-mismatch",
            "facts[0].hash",
        ),
        (
            "POST",
            "/facts",
            {"facts": [wire(CUSTOMER), {"type": "Shop.Note", "fields": {"text": "x" * 1_100_000}}]},
            413,
            "too-large",
            "facts[1]",
        ),
        ("GET", "/tables/nope", None, 404, "unknown-table", "name"),
        ("GET", "/tables/nope/changes", None, 404, "unknown-table", "name"),
        ("GET", "/tables/orders?limit=0", None, 400, "invalid-limit", "limit"),
        ("GET", "/tables/orders?limit=abc", None, 400, "invalid-limit", "limit"),
        ("GET", "/tables/orders?after=zz", None, 400, "invalid-cursor", "after"),
        # a row's hash with its + not URL-encoded arrives with a space
        ("GET", f"/tables/orders?after={'A+' * 43}==", None, 400, "invalid-cursor", "after"),
        ("GET", "/facts?after=-1", None, 400, "invalid-cursor", "after"),
        ("GET", "/facts?limit=99999", None, 400, "invalid-limit", "limit"),
        # digits int() refuses, or an SQL integer cannot hold: a 400, never a 500
        ("GET", "/facts?after=%C2%B2", None, 400, "invalid-cursor", "after"),
        ("GET", f"/facts?after={2**63}", None, 400, "invalid-cursor", "after"),
        ("GET", f"/facts?after={'9' * 5000}", None, 400, "invalid-cursor", "after"),
        ("GET", "/facts?limit=%C2%B2", None, 400, "invalid-limit", "limit"),
        ("GET", f"/tables/orders?limit={'9' * 5000}", None, 400, "invalid-limit", "limit"),
        ("GET", "/nothing-here", None, 404, "not-found", None),
        ("DELETE", "/facts", None, 405, "method-not-allowed", None),
    ]
    for method, path, body, status, code, field in cases:
        if isinstance(body, bytes):
            response = await client.request(method, path, content=body)
        elif body is not None:
            response = await client.request(method, path, json=body)
        else:
            response = await client.request(method, path)
        assert response.status_code == status, (path, body, response.text)
        error = response.json()["error"]
        assert (error["code"], error.get("field")) == (code, field), response.text
        assert error["message"]
    assert await state(sidecar, client) == before
    assert (await client.get(fact_path(stranger))).status_code == 404


async def test_a_claimed_hash_that_is_not_a_string_is_named_as_such(
    api: tuple[Sidecar, httpx.AsyncClient],
) -> None:
    """``"hash": 5`` is a type problem, not a mismatch: 400 naming the field and the
    type; nothing of the request is published (the first fact is fine)."""
    sidecar, client = api
    before = await state(sidecar, client)
    for claimed, named in ((5, "a number"), (True, "a boolean"), ([CUSTOMER.hash], "an array")):
        body = {"facts": [wire(Fact("Shop.Customer", {"email": "y"})), {**wire(CUSTOMER)}]}
        body["facts"][1]["hash"] = claimed
        response = await client.post("/facts", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid-fact", "facts[1].hash"), error
        assert (
            error["message"]
            == f"facts[1].hash: must be a string (the fact's base64 SHA-512 hash), not {named}"
        )
        assert "not the hash of this content" not in response.text
    # Nested (a predecessor given as a whole fact) the same.
    order = wire(ORDER)
    order["predecessors"]["customer"] = {**wire(CUSTOMER), "hash": 5}
    response = await client.post("/facts", json={"facts": [order]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "facts[0].predecessors.customer.hash"
    assert "must be a string" in response.json()["error"]["message"]
    assert await state(sidecar, client) == before


async def test_event_stream_sends_added_changed_removed(
    api: tuple[Sidecar, httpx.AsyncClient],
) -> None:
    sidecar, client = api
    async with client.stream("GET", "/tables/orders/changes") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert await anext(lines) == ": connected"
        await _post(client, CUSTOMER, ORDER)
        added = await next_event(lines)
        assert (added["op"], added["key"], added["row"]["number"]) == ("added", ORDER.hash, 1)
        placed = Fact("Shop.Order.Status", {"value": "placed"}, {"order": ORDER, "prior": []})
        await _post(client, placed)
        changed = await next_event(lines)
        assert (changed["op"], changed["row"]["status"]) == ("changed", "placed")
        await _post(client, Fact("Shop.Order.Cancelled", {}, {"order": ORDER}))
        removed = await next_event(lines)
        assert (removed["op"], removed["key"], removed["row"]) == ("removed", ORDER.hash, None)
    assert await rows(client, "orders") == []


async def test_concurrent_edits_show_candidates(api: tuple[Sidecar, httpx.AsyncClient]) -> None:
    sidecar, client = api
    placed = Fact("Shop.Order.Status", {"value": "placed"}, {"order": ORDER, "prior": []})
    left = Fact("Shop.Order.Status", {"value": "shipped"}, {"order": ORDER, "prior": [placed]})
    right = Fact("Shop.Order.Status", {"value": "on hold"}, {"order": ORDER, "prior": [placed]})
    await _post(client, CUSTOMER, ORDER, placed, left, right)

    async def two_leaves() -> bool:
        found = await rows(client, "orders")
        return bool(found) and len(found[0]["status_candidates"]) == 2

    await eventually(two_leaves, what="two candidates")
    (row,) = await rows(client, "orders")
    leaves = sorted([left, right], key=lambda f: f.hash)
    assert row["status"] == leaves[-1].fields["value"]  # the greatest hash wins
    assert row["status_candidates"] == [f.fields["value"] for f in leaves]
    # The app learns the leaves' hashes from the row endpoint, and merges them.
    one = await client.get(f"/tables/orders/rows/{quote(ORDER.hash, safe='')}")
    assert one.status_code == 200
    assert one.json()["row"] == row
    assert one.json()["leaves"] == {
        "status": [{"type": f.type, "hash": f.hash, "value": f.fields["value"]} for f in leaves]
    }
    merge = {
        "type": "Shop.Order.Status",
        "fields": {"value": "shipped"},
        "predecessors": {
            "order": {"type": ORDER.type, "hash": ORDER.hash},
            "prior": [
                {"type": leaf["type"], "hash": leaf["hash"]}
                for leaf in one.json()["leaves"]["status"]
            ],
        },
    }
    assert (await client.post("/facts", json={"facts": [merge]})).status_code == 201

    async def merged() -> bool:
        return (await rows(client, "orders"))[0]["status_candidates"] == ["shipped"]

    await eventually(merged, what="the merge")
    missing = await client.get(f"/tables/orders/rows/{quote(placed.hash, safe='')}")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown-row")


async def test_export_pages_predecessors_first(api: tuple[Sidecar, httpx.AsyncClient]) -> None:
    sidecar, client = api
    placed = Fact("Shop.Order.Status", {"value": "placed"}, {"order": ORDER, "prior": []})
    response = await client.post("/facts", json={"facts": [nested(placed)]})
    assert response.status_code == 201, response.text  # its ancestors are shipped with it
    await sidecar.bus.drain()
    seen: list[dict[str, Any]] = []
    after = "0"
    while True:
        page = (await client.get("/facts", params={"after": after, "limit": 1})).json()
        if not page["facts"]:
            assert page["next"] == after  # stable at the end
            break
        assert len(page["facts"]) == 1
        seen.extend(page["facts"])
        after = page["next"]
    assert [f["hash"] for f in seen] == [CUSTOMER.hash, ORDER.hash, placed.hash]
    assert seen[1] == {**ORDER.to_wire(), "fields": {"number": 1}}


async def test_healthz_and_readyz_flip(document: dict[str, Any]) -> None:
    async with running(document):
        pass  # the node's subscription now exists: what is published next waits for it
    facts = [Fact("Shop.Customer", {"email": f"c{i}@example.com"}) for i in range(50)]
    settings = document["factbus"]
    async with Bus(
        settings["transport"], "memory://", topic=settings["topic"], node="till", consume=False
    ) as till:
        await till.publish(*facts)
    await readyz_waits_for_the_backlog(document, len(facts), quiet=1.0)


async def test_event_streams_end_when_the_sidecar_stops(
    api: tuple[Sidecar, httpx.AsyncClient],
) -> None:
    sidecar, client = api
    async with client.stream("GET", "/tables/orders/changes") as stream:
        lines = stream.aiter_lines()
        assert await anext(lines) == ": connected"
        async with asyncio.timeout(10):  # well before uvicorn's 5 s forced shutdown + slack
            closing = asyncio.create_task(sidecar.aclose())
            rest = [line async for line in lines]
            await closing
    assert all(not line.startswith("data:") for line in rest)
    assert sidecar.url is None


async def test_healthz_fails_once_the_consumer_stopped(
    api: tuple[Sidecar, httpx.AsyncClient],
) -> None:
    sidecar, client = api
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    consumer = sidecar.bus.consumer
    assert consumer is not None
    consumer.cancel()  # what a crashed consumer looks like from outside
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "failing", "reason": "the consumer was cancelled"}


async def test_table_pages_follow_next(api: tuple[Sidecar, httpx.AsyncClient]) -> None:
    sidecar, client = api
    orders = [Fact("Shop.Order", {"number": n}, {"customer": CUSTOMER}) for n in range(1, 8)]
    await _post(client, CUSTOMER, *orders)
    await sidecar.bus.drain()
    assert any("+" in o.hash or "/" in o.hash for o in orders)  # the cursor needs encoding
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = (await client.get("/tables/orders", params=params)).json()
        seen.extend(row["hash"] for row in page["rows"])
        if page["next"] is None:
            break
        assert page["next"] == page["rows"][-1]["hash"]
        after = page["next"]
    assert seen == sorted(o.hash for o in orders)
