"""The sidecar's ``GET /metrics``: the Prometheus text of its Bus, scraped with a
real client (httpx) from the running server (memory transport, SQLite store)."""

from __future__ import annotations

import uuid
from pathlib import Path

from http_support import running, shop_document, wire
from prometheus_client.parser import text_string_to_metric_families

from factbus import Fact
from factbus.testing.polling import eventually

CUSTOMER = Fact("Shop.Customer", {"email": "grace@example.com"})
ORDER = Fact("Shop.Order", {"number": 7}, {"customer": CUSTOMER})


def _value(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_metrics_route_exports_the_sidecars_bus(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    topic, node = f"shop-{run}", f"node-{run}"
    document = shop_document(
        f"memory://metrics-{run}", f"sqlite:///{tmp_path / 'app.db'}", topic, node
    )
    async with running(document) as (_, client):
        response = await client.post("/facts", json={"facts": [wire(CUSTOMER), wire(ORDER)]})
        assert response.status_code == 201, response.text
        labels = {"topic": topic, "node": node}

        async def handled() -> bool:
            text = (await client.get("/metrics")).text
            return _value(text, "factbus_facts_handled_total", **labels) == 2

        await eventually(handled, what="2 facts handled in /metrics")
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert _value(text, "factbus_facts_waiting", **labels) == 0
        count = "factbus_handler_duration_seconds_count"
        assert _value(text, count, fact_type="Shop.Order", **labels) == 1
        assert _value(text, "factbus_consumer_lag", **labels) == 0
        refused = await client.post("/metrics")
        assert refused.status_code == 405
