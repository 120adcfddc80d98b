"""Kafka keeps facts for good: topics factbus creates never expire records, and a
node joining a topic whose history was cut (finite retention, deleted records)
is warned. Real broker; each test uses topics of its own and deletes them."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from structlog.testing import capture_logs

from conftest import broker_url
from factbus.testing.brokers import kafka_bootstrap, unique
from factbus.transport import Message
from factbus_kafka import KafkaTransport

pytestmark = pytest.mark.broker("kafka")


@pytest.fixture
def kafka() -> tuple[str, AdminClient, list[str]]:
    """The test Kafka's URL, an admin client, and the names a test made (their
    topics are removed after it by tests/conftest.py)."""
    url = broker_url("kafka")
    return url, AdminClient({"bootstrap.servers": kafka_bootstrap(url)}), []


def _name(made: list[str], prefix: str) -> str:
    name = unique(prefix)
    made.append(name)
    return name


async def test_created_topics_keep_records_forever(
    kafka: tuple[str, AdminClient, list[str]],
) -> None:
    url, admin, made = kafka
    topic = _name(made, "retain")
    async with KafkaTransport(url) as transport:
        await transport.publish(topic, [Message(b"m", "m")])
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    (config,) = [await asyncio.wrap_future(f) for f in futures.values()]
    assert config["retention.ms"].value == "-1"
    assert config["retention.bytes"].value == "-1"
    assert config["cleanup.policy"].value == "delete"


async def test_joining_a_topic_with_deleted_records_warns(
    kafka: tuple[str, AdminClient, list[str]],
) -> None:
    url, admin, made = kafka
    cut, whole = _name(made, "cut"), _name(made, "whole")
    # Topics made by someone else, with a finite retention, as an operator would.
    created = admin.create_topics(
        [NewTopic(t, num_partitions=1, config={"retention.ms": "3600000"}) for t in (cut, whole)]
    )
    for future in created.values():
        await asyncio.wrap_future(future)
    producer = Producer({"bootstrap.servers": kafka_bootstrap(url)})
    for topic in (cut, whole):
        for i in range(10):
            producer.produce(topic, f"m-{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    deleted = admin.delete_records([TopicPartition(cut, 0, 4)], operation_timeout=30)
    for future in deleted.values():
        await asyncio.wrap_future(future)

    async with KafkaTransport(f"{url}?session_timeout=6&heartbeat_interval=0.5") as transport:
        with capture_logs() as logs:
            first = await transport.subscribe(whole, unique("g"))
            second = await transport.subscribe(cut, unique("g"))
        await first.aclose()
        await second.aclose()
    warnings = [e for e in logs if e["event"] == "kafka topic lost history"]
    assert [w["topic"] for w in warnings] == [cut]
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["earliest_offsets"] == {0: 4}
