"""Prometheus metrics over real brokers, read through a real HTTP scrape.

After a known workload the scraped counters equal the known numbers (handled,
duplicates, parked, released, failed, waiting, rejected by reason, handler
and end-to-end histogram counts); a node's consumer lag, measured by the
transport and exported as ``factbus_consumer_lag``, goes to zero when drained.
Each test runs on memory, RabbitMQ (amqp://), Kafka and kombu+redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from obs_support import scrape, scrape_until, transport_url, value

from factbus import Bus, Fact, Message
from factbus.envelope import encode
from factbus.metrics import Metrics, MetricsServer
from factbus.testing.brokers import prepare_group, unique
from factbus.transport import open_transport

KINDS = [
    "memory",
    pytest.param("amqp", marks=pytest.mark.broker("amqp")),
    pytest.param("kafka", marks=pytest.mark.broker("kafka")),
    pytest.param("redis", marks=pytest.mark.broker("redis")),
]
NODE = unique("obs-node")  # a Kafka group of its own per run


@pytest.fixture
async def exporter() -> AsyncIterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(lag_interval=0.2)
    server = metrics.serve(0)
    try:
        yield metrics, server
    finally:
        server.close()


@pytest.fixture
def topic() -> str:
    return unique("obs")


def _bad_bodies() -> dict[str, list[bytes]]:
    """Envelopes a receiver must reject, by the reason code it must give."""
    good = orjson.loads(encode([Fact("Obs.Tampered", {"i": 1})]))
    tampered = {**good, "facts": [{**good["facts"][0], "fields": {"i": 2}}]}
    future = {**good, "v": 99}
    return {
        "malformed": [b"not json", b"{", b'{"v": 1}'],
        "hash-mismatch": [orjson.dumps(tampered), orjson.dumps(tampered).replace(b"2", b"3")],
        "unknown-version": [orjson.dumps(future)],
    }


@pytest.mark.parametrize("kind", KINDS)
async def test_scraped_counters_equal_the_workload(
    kind: str, topic: str, exporter: tuple[Metrics, MetricsServer]
) -> None:
    metrics, server = exporter
    url = transport_url(kind, topic)
    bus = Bus(url, "memory://", topic=topic, node=NODE, metrics=metrics, retry_attempts=1)
    handled: list[Fact] = []
    for fact_type in ("Obs.Root", "Obs.Child", "Obs.Late"):
        bus.handler(fact_type)(handled.append)

    @bus.handler("Obs.Boom")
    def boom(fact: Fact) -> None:
        raise RuntimeError("boom")

    publisher = Bus(url, "memory://", topic=topic, node="obs-publisher", consume=False)
    roots = [Fact("Obs.Root", {"i": i}) for i in range(10)]
    children = [Fact("Obs.Child", {"i": i}, {"root": r}) for i, r in enumerate(roots)]
    booms = [Fact("Obs.Boom", {"i": i}) for i in range(2)]
    orphan = Fact("Obs.Late", {"i": 0}, {"boom": booms[0]})
    node = {"node": NODE, "topic": topic}
    async with bus, publisher:
        # Children first: parked, waiting for their roots.
        await publisher.publish(*children, ancestors=False)
        await scrape_until(server.url, lambda s: value(s, "factbus_facts_waiting", **node) == 10)
        # Roots: handled, and they release the children.
        await publisher.publish(*roots, ancestors=False)
        await scrape_until(
            server.url, lambda s: value(s, "factbus_facts_handled_total", **node) == 20
        )
        # Half the roots again: duplicates.
        await publisher.publish(*roots[:5], ancestors=False)
        # Envelopes that must be rejected, by reason.
        bad = _bad_bodies()
        await publisher.transport.publish(
            topic,
            [
                Message(body, f"bad-{reason}-{i}")
                for reason, bodies in bad.items()
                for i, body in enumerate(bodies)
            ],
        )
        # Facts whose handler fails, then a fact that depends on one of them.
        await publisher.publish(*booms, ancestors=False)
        await scrape_until(
            server.url, lambda s: value(s, "factbus_facts_failed_total", **node) == 2
        )
        await publisher.publish(orphan, ancestors=False)
        samples = await scrape_until(
            server.url,
            lambda s: (
                value(s, "factbus_facts_received_total", **node) == 28
                and value(s, "factbus_facts_rejected_total", **node) == 6
            ),
        )

    assert value(samples, "factbus_facts_handled_total", **node) == 20
    assert value(samples, "factbus_facts_duplicates_total", **node) == 5
    assert value(samples, "factbus_facts_parked_total", **node) == 11
    assert value(samples, "factbus_facts_released_total", **node) == 10
    assert value(samples, "factbus_facts_failed_total", **node) == 2
    assert value(samples, "factbus_facts_waiting", **node) == 1  # the orphan
    for reason, bodies in bad.items():
        got = value(samples, "factbus_facts_rejected_total", reason=reason, **node)
        assert got == len(bodies), reason
    count = "factbus_handler_duration_seconds_count"
    assert value(samples, count, fact_type="Obs.Root", **node) == 10
    assert value(samples, count, fact_type="Obs.Child", **node) == 10
    assert value(samples, count, fact_type="Obs.Boom", **node) == 2  # failed attempts too
    # End-to-end latency: facts handled in the step that received them (the
    # roots); the children were released in a later step (no publish time kept).
    assert value(samples, "factbus_end_to_end_latency_seconds_count", **node) == 10
    assert value(samples, "factbus_step_duration_seconds_count", **node) >= 1
    assert len(handled) == 20
    assert sorted(f.type for f in handled).count("Obs.Child") == 10


@pytest.mark.parametrize("kind", KINDS)
async def test_lag_goes_to_zero_when_drained(
    kind: str, topic: str, exporter: tuple[Metrics, MetricsServer]
) -> None:
    metrics, server = exporter
    url = transport_url(kind, topic)
    count = 40
    await prepare_group(url, topic, NODE)
    probe = open_transport(url)
    publisher = Bus(url, "memory://", topic=topic, node="obs-publisher", consume=False)
    try:
        await probe.connect()
        async with publisher:
            await publisher.publish(
                *[Fact("Obs.Item", {"i": i}) for i in range(count)], ancestors=False
            )
        lag = getattr(probe, "lag")  # noqa: B009 - the optional ReportsLag method
        before = await lag(topic, NODE)
        assert sum(before.values()) == count, before

        bus = Bus(url, "memory://", topic=topic, node=NODE, metrics=metrics)
        bus.handler("Obs.Item")(lambda fact: None)
        node = {"node": NODE, "topic": topic}
        async with bus:
            samples = await scrape_until(
                server.url,
                lambda s: (
                    value(s, "factbus_facts_handled_total", **node) == count
                    and any(n == "factbus_consumer_lag" for n, _ in s)
                    and value(s, "factbus_consumer_lag", **node) == 0
                ),
                timeout=60,
            )
            lag_samples = [ls for n, ls in samples if n == "factbus_consumer_lag"]
            partitions = {dict(ls)["partition"] for ls in lag_samples}
            assert partitions == ({"0"} if kind == "kafka" else {"queue"})
        after = await lag(topic, NODE)
        assert sum(after.values()) == 0, after
    finally:
        await probe.aclose()


async def test_a_closed_bus_leaves_the_registry(topic: str) -> None:
    metrics = Metrics()
    bus = Bus(f"memory://{topic}", "memory://", topic=topic, node=NODE, metrics=metrics)
    async with bus:
        assert [b.node for b in metrics.buses()] == [NODE]
        assert b"factbus_facts_handled_total" in metrics.text()
    assert metrics.buses() == []
    samples = await _text_samples(metrics)
    assert not any(name == "factbus_facts_handled_total" for name, _ in samples)


async def _text_samples(metrics: Metrics) -> list[tuple[str, dict[str, str]]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, s.labels)
        for family in text_string_to_metric_families(metrics.text().decode())
        for s in family.samples
    ]


async def test_scrape_through_the_exporter_is_real_http(
    exporter: tuple[Metrics, MetricsServer],
) -> None:
    _, server = exporter
    assert server.url.startswith("http://127.0.0.1:")
    samples = await scrape(server.url)
    assert ("factbus_facts_handled_total", frozenset()) not in samples  # no bus bound yet
