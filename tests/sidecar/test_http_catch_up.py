"""Catch-up export: a sidecar configured with ``[sidecar] catch_up`` pulls a peer's
``GET /facts`` pages on start and serves the same rows (issue 13, item 3)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import httpx
from http_support import nested, rows, running, shop_document

from factbus import Fact
from factbus.sidecar.config import parse_config
from factbus.sidecar.service import Sidecar
from factbus.testing.polling import eventually


async def test_a_late_sidecar_catches_up_from_a_peer(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    customer = Fact("Shop.Customer", {"email": "ada@example.com"})
    orders = [Fact("Shop.Order", {"number": n}, {"customer": customer}) for n in range(30)]
    placed = [
        Fact("Shop.Order.Status", {"value": "placed"}, {"order": o, "prior": []}) for o in orders
    ]
    cancelled = Fact("Shop.Order.Cancelled", {}, {"order": orders[0]})
    peer_doc = shop_document(
        f"memory://peer-{run}", f"sqlite:///{tmp_path / 'peer.db'}", "shop", f"peer-{run}"
    )
    async with running(peer_doc) as (peer, client):
        body = {"facts": [nested(f) for f in [*placed, cancelled]]}
        assert (await client.post("/facts", json=body)).status_code == 201
        await peer.bus.drain()
        expected = await rows(client, "orders")
        assert len(expected) == 29
        # A node on another broker namespace: it can only learn the facts from the peer.
        late_doc = shop_document(
            f"memory://late-{run}", f"sqlite:///{tmp_path / 'late.db'}", "shop", f"late-{run}"
        )
        late_doc["sidecar"]["catch_up"] = [str(peer.url)]
        async with running(late_doc) as (late, late_client):
            assert late.settings.catch_up == (str(peer.url),)
            await late.bus.drain()
            assert await rows(late_client, "orders") == expected
            assert await late.archive.count() == await peer.archive.count()


CATCH_UP_FACTS = int(os.environ.get("FACTBUS_TEST_CATCH_UP_FACTS", "4000"))
"""Facts the peer holds in the probe test: enough that the catch-up lasts a few
pages (1,000 facts each); raise it to watch a longer catch-up."""


async def test_probes_answer_while_a_sidecar_catches_up(tmp_path: Path) -> None:
    """The HTTP server listens before the catch-up: /healthz is 200 throughout,
    /readyz is 503 naming the peer being caught up from, then 200."""
    run = uuid.uuid4().hex[:8]
    customers = [
        Fact("Shop.Customer", {"email": f"c{n}@example.com"}) for n in range(CATCH_UP_FACTS)
    ]
    peer_doc = shop_document(
        f"memory://peer-{run}", f"sqlite:///{tmp_path / 'peer.db'}", "shop", f"peer-{run}"
    )
    async with running(peer_doc) as (peer, _):
        for start in range(0, len(customers), 500):
            await peer.publish(customers[start : start + 500])
        await peer.bus.drain()
        assert await peer.archive.count() == CATCH_UP_FACTS
        late_doc = shop_document(
            f"memory://late-{run}", f"sqlite:///{tmp_path / 'late.db'}", "shop", f"late-{run}"
        )
        late_doc["sidecar"]["catch_up"] = [str(peer.url)]
        late = Sidecar(parse_config(late_doc), listen="127.0.0.1:0")
        starting = asyncio.create_task(late.start())
        seen: list[tuple[int, int, str]] = []  # (healthz, readyz, reason) while starting
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                while not starting.done():
                    if late.url is not None:
                        health = await client.get(f"{late.url}/healthz")
                        ready = await client.get(f"{late.url}/readyz")
                        reason = ready.json().get("reason", "")
                        seen.append((health.status_code, ready.status_code, reason))
                    await asyncio.sleep(0.01)
                await starting
                catching_up = [s for s in seen if s[2] == f"catching up from {peer.url}"]
                assert catching_up, f"no probe answered during the catch-up: {seen[:5]}"
                assert all(health == 200 and ready == 503 for health, ready, _ in seen), seen
                assert late.bus.stage == "running"
                assert await late.archive.count() == CATCH_UP_FACTS

                async def ready() -> bool:
                    answer = await client.get(f"{late.url}/readyz")
                    return answer.status_code == 200 and answer.json() == {"status": "ready"}

                await eventually(ready, what="/readyz 200 after the catch-up")
                assert (await client.get(f"{late.url}/healthz")).status_code == 200
        finally:
            if not starting.done():
                starting.cancel()
            await late.aclose()
