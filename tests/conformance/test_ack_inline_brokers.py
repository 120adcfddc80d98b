"""Kafka and RabbitMQ deliveries acked by ``factbus.transport.ack_all`` (their plain
``ack_inline``, no coroutine each): what was acked is not delivered again to the
group, what was not comes back, and a second ack is refused. Real brokers;
unique topic and group names."""

from __future__ import annotations

import pytest

from conftest import broker_url
from factbus.errors import TransportError
from factbus.testing.brokers import unique
from factbus.transport import Message, ack_all, open_transport

KAFKA_OPTIONS = "?session_timeout=6&heartbeat_interval=0.5&commit_interval=0.5"


def _url(name: str) -> str:
    url = broker_url(name)
    return url + KAFKA_OPTIONS if name == "kafka" else url


@pytest.mark.parametrize("name", ["kafka", "amqp"])
async def test_ack_all_settles_broker_deliveries_without_a_coroutine_each(name: str) -> None:
    topic = unique("ack-inline")
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


async def test_kafka_ack_all_of_a_step_moves_each_partition_and_stops_at_a_settled_one() -> None:
    """Kafka acks a step's deliveries in one call (``ack_inline_all``): each
    partition's watermark moves past its leading acked records; a delivery
    acked before stops the call there (those before it are acked, it and
    those after it are not), as ``await delivery.ack()`` one by one would."""
    topic = unique("ack-inline-all")
    transport = open_transport(_url("kafka"))
    await transport.connect()
    try:
        subscription = await transport.subscribe(topic, f"{topic}.group")
        await transport.publish(
            topic,
            [Message(b"A%d" % i, f"{topic}-A{i}", f"{topic}-A") for i in range(3)]
            + [Message(b"B%d" % i, f"{topic}-B{i}", f"{topic}-B") for i in range(3)],
        )
        taken: list = []
        for _ in range(100):
            taken.extend(await subscription.next_batch(6 - len(taken), timeout=0.5))
            if len(taken) >= 6:
                break
        by = {d.body: d for d in taken}
        assert sorted(by) == [b"A0", b"A1", b"A2", b"B0", b"B1", b"B2"]
        assert hasattr(type(by[b"A0"]), "ack_inline_all")
        await ack_all([by[b"A0"]])
        with pytest.raises(TransportError, match="already acked or nacked"):
            await ack_all([by[b"A1"], by[b"B0"], by[b"A0"], by[b"B1"]])
        with pytest.raises(TransportError, match="already acked or nacked"):
            await ack_all([by[b"B0"]])  # B0 was acked by the call above
        await ack_all([by[b"B1"], by[b"B2"]])  # B1 was not: it can be acked now
        await subscription.aclose()
        # Acked: A0, A1, B0, B1, B2; A2 not. A2 comes back, and with it whatever
        # follows it in its partition (the B records too, if they share it).
        shared = by[b"A0"].partition == by[b"B0"].partition
        expected = {b"A2", b"B0", b"B1", b"B2"} if shared else {b"A2"}
        again = await transport.subscribe(topic, f"{topic}.group")
        back: list = []
        for _ in range(40):
            back.extend(await again.next_batch(10, timeout=0.5))
            if {d.body for d in back} >= expected:
                break
        back.extend(await again.next_batch(10, timeout=1.0))  # nothing else comes
        assert {d.body for d in back} == expected
        await again.aclose()
    finally:
        await transport.aclose()
