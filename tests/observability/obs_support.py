"""Helpers of the observability tests: broker URLs, scraping, cleanup."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from factbus.testing.brokers import broker_url, with_options

# Short heartbeats make Kafka group joins quick; one partition keeps publish order.
KAFKA_OPTIONS = "session_timeout=6&heartbeat_interval=0.5&commit_interval=0.2&partitions=1"


def transport_url(kind: str, namespace: str) -> str:
    """The URL of transport ``kind`` (memory, amqp, kafka, redis) for a test."""
    if kind == "memory":
        return f"memory://{namespace}"
    return with_options(broker_url(kind), KAFKA_OPTIONS if kind == "kafka" else "")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """GET ``url`` with httpx and parse the Prometheus text: ``(name, labels) -> value``."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape_until(
    url: str, check: Callable[[Samples], bool], timeout: float = 30.0
) -> Samples:
    """Scrape until ``check`` holds; the last scrape (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            interesting = {
                f"{n}{dict(ls)}": v
                for (n, ls), v in samples.items()
                if n.startswith("factbus_") and "bucket" not in n and "created" not in n
            }
            raise AssertionError(f"metrics never satisfied the check: {interesting}")
        await asyncio.sleep(0.2)
