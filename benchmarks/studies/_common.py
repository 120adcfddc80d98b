"""Small helpers the study scripts share: a percentile, readings of CPU time
from ``/proc`` (Linux), and a raw aio-pika consumer (the RabbitMQ baselines).
The scripts run as ``python benchmarks/studies/NAME.py``, which puts this
folder on ``sys.path``: they import it as ``_common``."""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections.abc import Iterable
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second: the unit of ``/proc`` CPU times."""

KAFKA_BROKER = b"kafka.Kafka"
"""What the Kafka broker's JVM has in its command line (:func:`process_cpu`)."""


def pct(values: Iterable[float], q: float, empty: float = 0.0) -> float:
    """The ``q`` quantile (0 to 1) of ``values``: the sorted value at index
    ``int(q * (n - 1))`` (nearest rank, rounded down); ``empty`` when there is none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))] if ordered else empty


def machine_jiffies() -> tuple[float, float]:
    """(total, idle) CPU time of the whole machine since boot, in ticks (the
    ``cpu`` line of ``/proc/stat``; idle includes iowait)."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    return sum(parts), parts[3] + parts[4]


def process_cpu(marker: bytes) -> float:
    """CPU seconds (user + system) of the first process whose command line
    contains ``marker`` (:data:`KAFKA_BROKER`); 0.0 if none."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def thread_schedstats() -> dict[int, tuple[str, int, int]]:
    """tid -> (name, ns on a CPU, ns runnable but waiting for a CPU) of this
    process's threads (``/proc/self/task/*/schedstat`` and ``comm``); a thread
    that ends while they are read is left out."""
    result: dict[int, tuple[str, int, int]] = {}
    for entry in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{entry}/schedstat") as f:
                on_cpu, waiting, _ = (int(x) for x in f.read().split())
            with open(f"/proc/self/task/{entry}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        result[int(entry)] = (name, on_cpu, waiting)
    return result


async def amqp_connect(url: str) -> Any:
    """An aio-pika connection to the broker of the ``amqp://`` URL ``url``
    (the raw baseline's own, :func:`factbus_amqp.baseline.connect_raw`)."""
    from factbus_amqp.baseline import connect_raw
    from factbus_amqp.config import AmqpConfig

    return await connect_raw(AmqpConfig.from_url(url))


async def raw_arrivals(
    channel: Any, topic: str, count: int, arguments: dict[str, Any] | None = None
) -> tuple[Any, Any, asyncio.Event, array[float]]:
    """Consume ``<topic>.raw`` (declared with ``arguments``, bound to the topic's
    exchange before anything is published) on ``channel``: each fact ``n`` (the
    ``n`` field of an envelope's last fact, 0 to ``count - 1``) gets its first
    arrival time (``time.perf_counter``) in the array; the event is set once
    all ``count`` arrived. The queue, the exchange, the event and the array."""
    import aio_pika
    import orjson

    exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"{topic}.raw", durable=True, arguments=arguments)
    await queue.bind(exchange, "#")
    received = array("d", bytes(8 * count))
    done = asyncio.Event()
    arrived = [0]

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        n = orjson.loads(message.body)["facts"][-1]["fields"]["n"]
        if not received[n]:
            received[n] = time.perf_counter()
            arrived[0] += 1
        await message.ack()
        if arrived[0] >= count:
            done.set()

    await queue.consume(on_message)
    return queue, exchange, done, received
