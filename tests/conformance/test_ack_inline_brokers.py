"""Kafka and RabbitMQ deliveries acked by ``factbus.transport.ack_all`` (their plain
``ack_inline``, no coroutine each): what was acked is not delivered again to the
group, what was not comes back, and a second ack is refused. Real brokers;
unique topic and group names."""

from __future__ import annotations

import uuid

import pytest

from conftest import broker_url
from factbus.errors import TransportError
from factbus.transport import Message, ack_all, open_transport

KAFKA_OPTIONS = "?session_timeout=6&heartbeat_interval=0.5&commit_interval=0.5"


def _url(name: str) -> str:
    url = broker_url(name)
    return url + KAFKA_OPTIONS if name == "kafka" else url


@pytest.mark.parametrize("name", ["kafka", "amqp"])
async def test_ack_all_settles_broker_deliveries_without_a_coroutine_each(name: str) -> None:
    topic = f"ack-inline-{uuid.uuid4().hex[:10]}"
    group = f"{topic}.group"
    transport = open_transport(_url(name))
    await transport.connect()
    try:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(
            # One key: one Kafka partition, in order, so the four acked are its first four.
            topic,
            [Message(b"%d" % i, f"{topic}-{i}", topic) for i in range(6)],
        )
        taken = []
        for _ in range(100):
            taken.extend(await subscription.next_batch(6 - len(taken), timeout=0.5))
            if len(taken) >= 6:
                break
        assert sorted(d.body for d in taken) == [b"%d" % i for i in range(6)]
        assert all(hasattr(type(d), "ack_inline") for d in taken)
        acked = [d for d in taken if int(d.body) < 4]
        await ack_all(acked)
        with pytest.raises(TransportError, match="already acked or nacked"):
            await ack_all(acked[:1])
        await subscription.aclose()
        again = await transport.subscribe(topic, group)
        back = []
        for _ in range(60):
            back.extend(await again.next_batch(10, timeout=0.5))
            if {d.body for d in back} >= {b"4", b"5"}:
                break
        assert sorted(d.body for d in back) == [b"4", b"5"]
        await again.aclose()
    finally:
        await transport.aclose()
