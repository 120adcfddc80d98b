"""``factbus worker --metrics-port``: each worker process serves its metrics,
scraped over HTTP while it consumes from RabbitMQ."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from obs_support import scrape_until, transport_url, value

from factbus import Bus, Fact
from factbus.testing.brokers import unique
from factbus.testing.commands import WorkerCommand

HERE = Path(__file__).resolve().parent


@pytest.mark.broker("amqp")
async def test_worker_serves_its_metrics() -> None:
    url = transport_url("amqp", "")
    topic = unique("obs-worker")
    env = {
        **os.environ,
        "OBS_APP_TRANSPORT": url,
        "OBS_APP_TOPIC": topic,
        "FACTBUS_LOG_LEVEL": "error",
    }
    worker = WorkerCommand(
        "worker_app:build_bus", "--metrics-port", "0", app_dir=HERE, env=env, every=None
    )
    await worker.start()
    try:
        line = await worker.wait_for("metrics at", timeout=60)
        found = re.search(r"metrics at (http://\S+)", line)
        assert found, line
        metrics_url = found.group(1)
        node = {"node": "obs-worker-0", "topic": topic}
        # The queue exists once the worker consumes: wait for its counters to appear.
        await scrape_until(
            metrics_url,
            lambda s: ("factbus_facts_handled_total", frozenset(node.items())) in s,
            timeout=60,
        )
        async with Bus(url, "memory://", topic=topic, node="obs-pub", consume=False) as bus:
            await bus.publish(*[Fact("Obs.Work", {"i": i}) for i in range(5)], ancestors=False)
        samples = await scrape_until(
            metrics_url, lambda s: value(s, "factbus_facts_handled_total", **node) == 5
        )
        assert (
            value(samples, "factbus_handler_duration_seconds_count", fact_type="Obs.Work", **node)
            == 5
        )
    finally:
        status = await worker.stop()
    assert status == 0
