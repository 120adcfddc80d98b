"""The publisher side of RabbitMQ's half-load latency: one message per call, paced.

The bench's half-load phase publishes message ``i`` at ``start + i / rate``,
each in its own call as soon as it is due (one fact per message, no pack),
calls not waiting for each other's confirms. This study does the same from
this process with one publisher variant per round, the rounds alternating:

- ``factbus``: a publish-only :class:`~factbus.Bus` (memory store), one
  ``Bus.publish(fact, ancestors=False)`` per message, as the bench's publisher;
- ``transport``: :meth:`AmqpTransport.publish` with the same message, without
  the bus (so the difference is ``Bus.publish``'s own cost);
- ``aiormq``: the transport's own confirm-mode channel, ``basic_publish`` of
  the same message awaited directly (the adapter's overhead over aiormq);
- ``aio-pika``: raw aio-pika, a confirm-mode channel, ``exchange.publish`` of
  the same body (persistent, message id and the bus's two headers);
  ``aio-pika-transient`` the same with transient messages (delivery mode 1:
  nothing written to disk, so what the persistent variant adds is the disk's);

and consumes every round with the same raw aio-pika consumer in a process of
its own (prefetch 1000, one ack per message), whose callback stamps arrival.

Reported per round: the publisher process's CPU µs per message (every thread,
over the phase: the calls and the confirms read back), how late the calls ran
against the schedule (``lag_p99_ms``), each call's duration (made -> every
confirm in), the calls in flight (confirms outstanding) sampled by a 1 ms
ticker, the ticker's own lateness (the publisher's loop busy or waiting for a
core), the largest socket write buffer seen, whether the broker blocked the
connection (``connection.blocked``), and publish call -> consumer callback
p50/p99. ``--profile VARIANT`` prints that variant's hottest functions
(cProfile, one extra round, not in the table).

Run (brokers up)::

    .venv/bin/python benchmarks/studies/amqp_publish_side.py \\
        --url amqp://guest:guest@127.0.0.1:5672/ --rate 2400 --messages 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import pstats
import time
import uuid
from array import array
from multiprocessing.connection import Connection
from typing import Any

import aio_pika
from _common import amqp_connect, pct, raw_arrivals

from factbus import Bus
from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.envelope import encode_one
from factbus.headers import HEADER_PRODUCER, HEADER_PUBLISHED_AT
from factbus.transport.base import Message
from factbus_amqp.transport import AmqpTransport, _properties

# -- the consumer (a process of its own) ---------------------------------------------


def _consumer_main(conn: Connection, url: str, topic: str, messages: int) -> None:
    asyncio.run(_consume(conn, url, topic, messages))


async def _consume(conn: Connection, url: str, topic: str, messages: int) -> None:
    connection = await amqp_connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue, exchange, done, received = await raw_arrivals(channel, topic, messages)
    conn.send("ready")
    await asyncio.to_thread(conn.recv)  # the round's publishing began
    try:
        async with asyncio.timeout(120):
            await done.wait()
    except TimeoutError:
        pass
    await queue.delete(if_unused=False, if_empty=False)
    await exchange.delete()
    await connection.close()
    conn.send(received.tobytes())


# -- the publisher variants (this process) ---------------------------------------------


class Publisher:
    """One variant: ``open``, then ``call(index)`` per message, then ``aclose``."""

    def __init__(self, variant: str, url: str, topic: str, workload: Any) -> None:
        self.variant = variant
        self.url = url
        self.topic = topic
        self.facts = workload.order
        self.bodies = [encode_one(fact) for fact in workload.order]
        self.headers = {HEADER_PRODUCER: f"{topic}-pub0", HEADER_PUBLISHED_AT: "0"}
        self._bus: Bus | None = None
        self._transport: AmqpTransport | None = None
        self._connection: Any = None
        self._exchange: Any = None
        self._channel: Any = None
        self.raw_connection: Any = None
        """The aiormq connection (its socket's write buffer, its blocked state)."""

    async def open(self) -> None:
        if self.variant == "factbus":
            self._bus = Bus(
                self.url, "memory://", topic=self.topic, node=f"{self.topic}-pub0", consume=False
            )
            await self._bus.publish(self.facts[0], ancestors=False)  # connect, warm up
            transport = self._bus.transport
            assert isinstance(transport, AmqpTransport)
            self._transport = transport
        elif self.variant in ("transport", "aiormq"):
            self._transport = AmqpTransport(self.url)
            await self._transport.connect()
            await self._transport.publish(self.topic, [self._message(0)])
            if self.variant == "aiormq":
                link = self._transport.link
                assert link is not None
                self._channel = await link.publish_channel(await link.live())
        else:
            self._connection = await amqp_connect(self.url)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.topic, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await self._exchange.publish(self._pika(0), routing_key="")
        if self._transport is not None:
            assert self._transport.link is not None
            live = await self._transport.link.live()
            self.raw_connection = live.connection.transport.connection
        else:
            self.raw_connection = self._connection.transport.connection

    def _message(self, i: int) -> Message:
        ref = self.facts[i].ref
        return Message(self.bodies[i], ref[1], ref[1], self.headers)

    def _pika(self, i: int) -> aio_pika.Message:
        return aio_pika.Message(
            self.bodies[i],
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
            if self.variant == "aio-pika-transient"
            else aio_pika.DeliveryMode.PERSISTENT,
            message_id=self.facts[i].ref[1],
            headers=dict(self.headers),
        )

    async def call(self, i: int) -> None:
        if self._channel is not None:
            message = self._message(i)
            await self._channel.basic_publish(
                message.body,
                exchange=self.topic,
                routing_key=message.key or "",
                properties=_properties(message.message_id, message.headers),
                mandatory=True,
            )
        elif self._bus is not None:
            await self._bus.publish(self.facts[i], ancestors=False)
        elif self._transport is not None:
            await self._transport.publish(self.topic, [self._message(i)])
        else:
            await self._exchange.publish(self._pika(i), routing_key="")

    async def aclose(self) -> None:
        if self._bus is not None:
            await self._bus.aclose()
        elif self._transport is not None:
            await self._transport.aclose()
        else:
            await self._connection.close()


async def _paced(publisher: Publisher, messages: int, rate: float) -> dict[str, Any]:
    """Publish ``messages`` (skipping the warm-up message 0), message ``i`` due at
    ``start + i / rate``, each call a task of its own."""
    period = 1.0 / rate
    stamps = array("d", bytes(8 * messages))
    returned = array("d", bytes(8 * messages))
    lags = array("d")
    inflight: set[asyncio.Task[None]] = set()
    samples = array("d")
    late = array("d")
    write_buffer = [0]
    blocked = [0]
    raw = publisher.raw_connection
    queued = [0]
    frame = raw._writer_task.get_coro().cr_frame
    writer = frame.f_locals.get("writer") if frame is not None else None
    running = [True]

    async def ticker() -> None:
        tick = 0.001
        while running[0]:
            before = time.perf_counter()
            await asyncio.sleep(tick)
            late.append((time.perf_counter() - before - tick) * 1e3)
            samples.append(len(inflight))
            queued[0] = max(queued[0], raw.write_queue.qsize())
            if writer is not None:
                write_buffer[0] = max(write_buffer[0], writer.transport.get_write_buffer_size())
            if not raw._Connection__connection_unblocked.is_set():
                blocked[0] += 1

    async def one(i: int) -> None:
        await publisher.call(i)
        returned[i] = time.perf_counter()

    ticking = asyncio.create_task(ticker())
    start = time.perf_counter() + 0.05
    cpu = time.process_time()
    i = 1
    while i < messages:
        now = time.perf_counter()
        due = start + i * period
        if due > now:
            await asyncio.sleep(due - now)
            continue
        # every message due by now, one call each (as the bench does with pack 1)
        while i < messages and start + i * period <= now:
            stamps[i] = now
            lags.append((now - start - i * period) * 1e3)
            task = asyncio.create_task(one(i))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            i += 1
    while inflight:
        await asyncio.gather(*list(inflight))
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - start
    running[0] = False
    await ticking
    calls = [(returned[i] - stamps[i]) * 1e3 for i in range(1, messages)]
    return {
        "stamps": stamps,
        "publisher_cpu_us_per_msg": round(cpu / (messages - 1) * 1e6, 1),
        "achieved_per_s": round((messages - 1) / elapsed, 1),
        "lag_p99_ms": round(pct(lags, 0.99), 2),
        "call_p50_ms": round(pct(calls, 0.5), 2),
        "call_p99_ms": round(pct(calls, 0.99), 2),
        "inflight_p50": pct(samples, 0.5),
        "inflight_p99": pct(samples, 0.99),
        "inflight_max": max(samples) if samples else 0,
        "ticker_late_p99_ms": round(pct(late, 0.99), 2),
        "write_queue_max": queued[0],
        "write_buffer_max_bytes": write_buffer[0],
        "blocked_ticks": blocked[0],
    }


async def one_round(
    variant: str, url: str, rate: float, messages: int, seed: int, profile: bool
) -> dict[str, Any]:
    topic = f"study-pubside-{uuid.uuid4().hex[:8]}"
    workload = build_workload(WorkloadSpec(messages, payload=100, seed=seed))
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_consumer_main, args=(child, url, topic, messages), daemon=True
    )
    process.start()
    child.close()
    await asyncio.to_thread(parent.recv)  # the consumer's queue is bound
    publisher = Publisher(variant, url, topic, workload)
    await publisher.open()
    parent.send("go")
    profiler = cProfile.Profile(time.process_time) if profile else None
    try:
        if profiler is not None:
            profiler.enable()
        result = await _paced(publisher, messages, rate)
        if profiler is not None:
            profiler.disable()
    finally:
        await publisher.aclose()
    received = array("d")
    received.frombytes(await asyncio.to_thread(parent.recv))
    process.join(10)
    stamps = result.pop("stamps")
    values = [(received[i] - stamps[i]) * 1e3 for i in range(1, messages) if received[i]]
    result.update(
        {
            "variant": variant,
            "rate": rate,
            "arrived": len(values),
            "latency_p50_ms": round(pct(values, 0.5), 2),
            "latency_p99_ms": round(pct(values, 0.99), 2),
            "latency_max_ms": round(max(values), 2) if values else 0.0,
            "load": [round(x, 2) for x in os.getloadavg()],
        }
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=2400.0)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="factbus,transport,aio-pika")
    parser.add_argument("--profile", default="", help="a variant to profile (one extra round)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    results = []
    for round_ in range(args.rounds):
        for variant in args.variants.split(","):
            result = await one_round(
                variant, args.url, args.rate, args.messages, round_ + 10, False
            )
            result["round"] = round_
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.profile:
        await one_round(args.profile, args.url, args.rate, args.messages, 99, True)
    if args.json:
        with open(args.json, "w") as out:  # noqa: ASYNC230
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    asyncio.run(main())
