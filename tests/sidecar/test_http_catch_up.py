"""Catch-up export: a sidecar configured with ``[sidecar] catch_up`` pulls a peer's
``GET /facts`` pages on start and serves the same rows (issue 13, item 3)."""

from __future__ import annotations

import uuid
from pathlib import Path

from http_support import nested, rows, running, shop_document

from factbus import Fact


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
