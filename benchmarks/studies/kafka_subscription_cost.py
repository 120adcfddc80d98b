"""What the Kafka adapter's consuming side costs alone, against the raw consumer.

A backlog of ``--messages`` messages (347-byte bodies, like a fact envelope
with 100 bytes of payload, keyed like the Bus keys them) is put on a fresh
topic with the adapter's producer; then a :class:`~factbus_kafka.KafkaTransport`
subscription drains it as the pipeline does (``next_batch(512)``, read each
body, ``ack_all`` the batch), with no pipeline behind it. Then the raw
confluent-kafka consumer of ``factbus bench``'s baseline
(:class:`factbus_kafka.baseline.KafkaBaseline`, same client settings) drains
a backlog of the same bodies. Reported for each: messages/s from the first
receipt to the last, and CPU µs per message of this process (all threads,
librdkafka's included). The difference of the CPU figures is the adapter's
overhead per message (delivery objects, the thread hand-off, acks, offsets).

Each ``--url`` is measured in turn, so a librdkafka setting can be compared in
the same run, e.g. ``?consumer.fetch.queue.backoff.ms=1000`` (librdkafka's
default) against the adapter's 1 ms.

Run (brokers up)::

    .venv/bin/python benchmarks/studies/kafka_subscription_cost.py --messages 100000 \\
        --url kafka://127.0.0.1:9092 \\
        --url 'kafka://127.0.0.1:9092?consumer.fetch.queue.backoff.ms=1000'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from factbus.transport.base import Message, ack_all
from factbus_kafka.baseline import KafkaBaseline
from factbus_kafka.transport import KafkaTransport

BODY = b"x" * 347


def cpu() -> float:
    """CPU seconds of this process, every thread."""
    times = os.times()
    return times.user + times.system


async def adapter(url: str, count: int) -> tuple[float, float]:
    """Messages/s and CPU µs/msg of a subscription draining ``count`` messages."""
    topic = f"study-subcost-{uuid.uuid4().hex[:8]}"
    transport = KafkaTransport(url)
    await transport.connect()
    try:
        messages = [Message(BODY, f"m{i}", f"m{i}", {}) for i in range(count)]
        for i in range(0, count, 2000):
            await transport.publish(topic, messages[i : i + 2000])
        subscription = await transport.subscribe(topic, f"{topic}.group")
        received, first, cpu_start, start = 0, 0, 0.0, 0.0
        while received < count:
            batch = await subscription.next_batch(512, 1.0)
            if batch and not first:
                first, cpu_start, start = len(batch), cpu(), time.perf_counter()
            for delivery in batch:
                _ = delivery.body
            await ack_all(batch)
            received += len(batch)
        elapsed, used = time.perf_counter() - start, cpu() - cpu_start
        await subscription.aclose()
    finally:
        await transport.aclose()
    measured = count - first
    return measured / elapsed, used / measured * 1e6


async def raw(url: str, count: int) -> tuple[float, float]:
    """Messages/s and CPU µs/msg of the raw consumer draining ``count`` messages."""
    baseline = KafkaBaseline(url, f"study-subcost-raw-{uuid.uuid4().hex[:8]}")
    await baseline.setup(subscribe=False)
    try:
        keys = [f"m{i}" for i in range(count)]
        chunks = [range(i, min(i + 1000, count)) for i in range(0, count, 1000)]
        await baseline.produce([BODY] * count, keys, chunks)
        cpu_start = cpu()
        await baseline.subscribe()
        last = await baseline.consume(count, 120.0)
        used = cpu() - cpu_start  # includes joining the group
    finally:
        await baseline.teardown()
    return (count - 1) / (last - baseline.first_at), used / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--url", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for url in args.url or ["kafka://127.0.0.1:9092"]:
            rate, cost = await adapter(url, args.messages)
            raw_rate, raw_cost = await raw(url, args.messages)
            print(
                f"{url}: subscription {rate:,.0f} msgs/s, {cost:.2f} CPU µs/msg; "
                f"raw consumer {raw_rate:,.0f} msgs/s, {raw_cost:.2f} CPU µs/msg",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
