"""Half-load latency on RabbitMQ: factbus's consumer against a raw aio-pika consumer.

The bench's half-load phase measures publish call -> handled, publishing paced
message by message. Much of that path is not factbus's consumer: the
publisher process, the broker (persistent messages, confirms), the machine's
scheduler. This study publishes the same paced workload the same way (the
bench's publisher process: a publish-only :class:`~factbus.Bus`, one call per
due message, calls not waiting for each other's confirms) and consumes it in
turn with

- ``raw``: aio-pika alone on a queue of its own bound to the topic's exchange
  (``prefetch`` 1000, one ``ack`` per message; receive time = when the
  consumer callback runs): the broker-and-machine floor;
- ``factbus``: a consuming :class:`~factbus.Bus` with an SQLite store, as in the
  bench (handled time = when the handler runs);
- ``factbus-memory``: the same with the memory store (no SQLite COMMIT),

rounds alternating, a fresh topic per round, and reports p50/p99/max of
publish -> received/handled for each. Where ``raw`` has the same tail as
``factbus``, the tail is not the consumer's.

Run (brokers up)::

    .venv/bin/python benchmarks/studies/amqp_latency_floor.py \\
        --url amqp://guest:guest@127.0.0.1:5672/ --rate 2300 --messages 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

from _common import amqp_connect, pct, raw_arrivals

from factbus import Bus
from factbus.bench.publisher import PublisherProcesses, PublishJob, merge_stamps
from factbus.bench.result import latencies
from factbus.bench.runner import FACT_TYPES, Recorder
from factbus.bench.workload import WorkloadSpec
from factbus_amqp.config import AmqpConfig

QUEUE_ARGUMENTS: dict[str, dict[str, Any]] = {
    "raw": {},
    "raw-v2": {"x-queue-version": 2},
    "raw-quorum": {"x-queue-type": "quorum"},
}
"""The raw variants: a classic queue (RabbitMQ's default, version 1 before 3.13, as
factbus declares it), a classic queue version 2, a quorum queue."""


async def _raw_consumer(
    url: str, topic: str, facts: int, arguments: dict[str, Any]
) -> tuple[Any, asyncio.Event, array[float]]:
    """A raw aio-pika consumer on ``<topic>.raw`` (bound before publishing)."""
    connection = await amqp_connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=AmqpConfig.from_url(url).prefetch)
    _, _, done, received = await raw_arrivals(channel, topic, facts, arguments)
    return connection, done, received


async def one_round(
    variant: str,
    url: str,
    publishers: PublisherProcesses,
    topic: str,
    spec: WorkloadSpec,
    rate: float,
    store_dir: Path,
) -> dict[str, Any]:
    summary = await publishers.prepare(spec)
    bus: Bus | None = None
    connection: Any = None
    if variant in QUEUE_ARGUMENTS:
        connection, done, received = await _raw_consumer(
            url, topic, spec.facts, QUEUE_ARGUMENTS[variant]
        )
    else:
        store = "memory://" if variant == "factbus-memory" else f"sqlite:///{store_dir}/s.db"
        recorder = Recorder()
        phase = recorder.begin(summary.run, spec.facts)
        bus = Bus(url, store, topic=topic, node=f"{topic}-consumer")
        for fact_type in FACT_TYPES:
            bus.handler(fact_type)(recorder)
        await bus.start()
        done, received = phase.done, phase.handled_at
    try:
        job = PublishJob(spec, 1000, rate=rate, start_at=time.perf_counter() + 0.1)
        reports = await publishers.publish(job)
        async with asyncio.timeout(120):
            await done.wait()
    finally:
        if bus is not None:
            await bus.aclose()
        if connection is not None:
            await connection.close()
    stamps = merge_stamps(reports, spec.facts)
    values = [v * 1e3 for v in latencies(stamps, received)]
    return {
        "variant": variant,
        "p50": round(pct(values, 0.5), 1),
        "p99": round(pct(values, 0.99), 1),
        "max": round(max(values), 1),
        "publish_lag_p99_ms": max(r.lag_p99_ms for r in reports),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=2300.0)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="raw,factbus,factbus-memory")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="factbus-latency-floor-") as tmp:
        for round_ in range(args.rounds):
            for variant in args.variants.split(","):
                topic = f"study-latfloor-{uuid.uuid4().hex[:8]}"
                publishers = PublisherProcesses(1, args.url, topic)
                await publishers.start()
                try:
                    store_dir = Path(tmp) / topic
                    store_dir.mkdir()
                    spec = WorkloadSpec(args.messages, payload=100, seed=round_ + 10)
                    result = await one_round(
                        variant, args.url, publishers, topic, spec, args.rate, store_dir
                    )
                finally:
                    await publishers.aclose()
                    await _forget(args.url, topic)
                result["round"] = round_
                results.append(result)
                print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))  # noqa: ASYNC240


async def _forget(url: str, topic: str) -> None:
    from factbus.bench.cleanup import Made, remove_made

    await remove_made(Made(url, topic, [f"{topic}-consumer", "raw"]))


if __name__ == "__main__":
    asyncio.run(main())
