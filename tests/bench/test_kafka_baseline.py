"""The raw Kafka baseline of ``factbus bench`` against the real broker: its producer's
untimed warm-up message is consumed but never counted, so the raw consumer counts
exactly the bodies it was given. Speed is never asserted."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import TopicPartition

from conftest import broker_url
from factbus_kafka.baseline import KafkaBaseline


async def test_the_warm_up_message_is_not_counted() -> None:
    baseline = KafkaBaseline(broker_url("kafka"), f"bench-raw-{uuid.uuid4().hex[:10]}")
    await baseline.setup()
    try:
        count = 40
        bodies = [b"body-%d" % i for i in range(count)]
        keys = [f"k{i}" for i in range(count)]
        assert baseline.produce_cpu_s is None
        start, end = await baseline.produce(bodies, keys, [range(20), range(20, count)])
        assert start <= end
        # The CPU of produce's own window (the bench's raw producer CPU per message).
        assert baseline.produce_cpu_s is not None and baseline.produce_cpu_s > 0
        last = await baseline.consume(count, 30.0)
        assert baseline.received == count
        assert baseline.first_at <= last
        # The topic holds one message more (the warm-up), read and left uncounted.
        consumer = baseline._consumer
        assert consumer is not None
        held = sum(
            consumer.get_watermark_offsets(TopicPartition(baseline.topic, p), timeout=10)[1]
            for p in range(baseline.config.partitions)
        )
        assert held == count + 1
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(baseline._consume, count + 1, 1.0)
        assert baseline.received == count
    finally:
        await baseline.teardown()


async def test_a_drain_counts_every_message_from_the_subscription_on() -> None:
    """The drain contract: ``subscribe`` (assigned) counts nothing; ``consume``
    counts every message of the backlog, also those received while ``subscribe``
    waited for the assignment."""
    baseline = KafkaBaseline(broker_url("kafka"), f"bench-raw-{uuid.uuid4().hex[:10]}")
    await baseline.setup(subscribe=False)
    try:
        count = 300
        bodies = [b"backlog-%d" % i for i in range(count)]
        keys = [f"k{i}" for i in range(count)]
        await baseline.produce(bodies, keys, [range(150), range(150, count)])
        await baseline.subscribe()
        assert baseline.received == 0
        await baseline.consume(count, 30.0)
        assert baseline.received == count
        assert baseline._held == []
    finally:
        await baseline.teardown()
