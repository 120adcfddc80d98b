"""What the Kafka publisher costs per message, layer by layer, against the raw producer.

One process, the real broker (``--url``, default ``kafka://127.0.0.1:9092``),
the bench's workload (independent facts, 100 B of payload, built and encoded
before any timing, as ``factbus bench``'s publisher process has them after the
raw producer's phase). Each variant publishes ``--calls`` calls of ``--batch``
messages; the figure is the least CPU time of ``--repeats`` such rounds
(``time.process_time``: this process, every thread, librdkafka's included),
in µs per message. The variants run interleaved, round by round, so a busy
minute on the shared machine touches them all alike.

Raw producer (confluent-kafka, the adapter's producer settings, called from
the main thread, no event loop):

* ``raw pipelined``: the bench's baseline: every call's messages produced
  (keyed by the fact hash), ``poll(0)`` after each call, one ``flush()`` at
  the end; a Python delivery callback per message.
* ``raw per call``: each call waits for its own reports (``flush()``), the
  rhythm ``publish``'s contract asks for; Python callback per message.
* ``+ 3 headers``: the same with the three headers a factbus record carries
  (producer, published-at, message id), keyword arguments and a new header
  list per message (the adapter before PROFILE.md §17).
* ``+ 3 headers, by position``: ``produce()``'s arguments by position and one
  header list per call, its last pair replaced per message (the adapter
  before PROFILE.md §22).
* ``+ 2 headers (no message id), by position``: the call's two constant
  headers only, one list per call, the id travelling as the key (the adapter
  since §22, for messages whose id is their key).
* ``+ only errors``: and ``delivery.report.only.error=true`` (confluent-kafka
  then skips the Python callback for a delivered message).
* ``+ no callback``: and no callback at all (failures unseen: a floor, not a
  contract).

``produce()`` alone: the calling thread's CPU inside ``produce()`` (reports
served apart) for those argument forms, and for bursts of 1 and 10 messages
into a producer idle for 2 ms (as small calls find it), with the whole
process's CPU per message at that rhythm.

factbus (on an event loop, the adapter's poller thread):

* ``KafkaTransport.publish``: of ready ``Message`` objects (one headers
  mapping per call, id = key, as ``Bus.publish`` gives them).
* ``Bus.publish``: of the prebuilt facts, ``ancestors=False``, a publish-only
  bus with the memory store, as the bench's publisher.

Then the parts alone (no broker; best of 7, µs per message): ``Message``
construction, ``encode_one`` (wire bytes cached), the per-message header
lists, the published-refs store write per call, and the per-call future with
``call_soon_threadsafe`` and ``wait_for`` (per call, µs), and ``Bus.publish``
over a transport whose ``publish`` does nothing (per message at calls of
``--batch``, per call at calls of one).

Small calls (``--small``): ``Bus.publish`` of 1, 2 and 3 facts a call, one
call after another and with 64 calls in flight (as the half-load phase makes
them), CPU µs per message and per call.

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/kafka_publish_cost.py --repeats 5 --small

``--only NAME`` (repeatable) limits the broker variants to those whose name
starts with NAME. The topics the run creates are deleted at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from factbus.bench.cputime import best_cpu_us, best_cpu_us_async
from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.bus import Bus
from factbus.envelope import encode_one
from factbus.fact import Fact
from factbus.headers import HEADER_MESSAGE_ID, HEADER_PRODUCER, HEADER_PUBLISHED_AT
from factbus.store.base import StoreBatch
from factbus.store.memory import MemoryStore
from factbus.transport.base import Message
from factbus.transport.memory import MemoryTransport
from factbus_kafka.config import KafkaConfig
from factbus_kafka.transport import KafkaTransport


class _Idle(MemoryTransport):
    """A memory:// transport whose ``publish`` does nothing: ``Bus.publish``'s own cost."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        return None


MADE: list[str] = []
"""Topics this run created, deleted at its end."""


def delete_topics(url: str) -> None:
    """Delete the topics this run created (best effort: the broker is shared)."""
    if not MADE:
        return
    admin = AdminClient(KafkaConfig.from_url(url).admin())
    for future in admin.delete_topics(MADE, operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result()


Sync = Callable[[], None]
Async = Callable[[], Awaitable[None]]


class RawVariants:
    """The raw producer's variants over one topic (see the module docstring)."""

    def __init__(self, config: KafkaConfig, topic: str, facts: Sequence[Fact], batch: int) -> None:
        self.topic = topic
        self.bodies = [encode_one(f) for f in facts]
        self.keys = [f.hash for f in facts]
        self.calls = [range(i, min(i + batch, len(facts))) for i in range(0, len(facts), batch)]
        settings = config.producer_settings()
        self.producer = Producer(settings)
        self.only_errors = Producer({**settings, "delivery.report.only.error": True})
        for producer in (self.producer, self.only_errors):
            producer.list_topics(topic, timeout=30)
            producer.produce(topic, b"", b"warm-up")
            producer.flush(30)
        self.failed: list[str] = []
        shared = {HEADER_PRODUCER: "study-pub0", HEADER_PUBLISHED_AT: f"{time.time():.6f}"}
        self.pairs = [(name, value.encode()) for name, value in shared.items()]

    def report(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed.append(str(error))

    def pipelined(self) -> None:
        produce, topic, bodies, keys, report = (
            self.producer.produce,
            self.topic,
            self.bodies,
            self.keys,
            self.report,
        )
        for call in self.calls:
            for i in call:
                produce(topic, bodies[i], keys[i], on_delivery=report)
            self.producer.poll(0)
        self._flush(self.producer)

    def per_call(
        self,
        headers: bool,
        producer: Any = None,
        callback: bool = True,
        by_position: bool = False,
        message_id: bool = True,
    ) -> None:
        producer = producer or self.producer
        produce, topic, bodies, keys = producer.produce, self.topic, self.bodies, self.keys
        report = self.report if callback else None
        pairs = self.pairs
        listed: list[tuple[str, bytes]] = [*pairs, (HEADER_MESSAGE_ID, b"")]
        last = len(pairs)
        for call in self.calls:
            for i in call:
                key = keys[i]
                if by_position and not message_id:
                    # The call's constant headers only (the id is the key).
                    produce(topic, bodies[i], key, -1, report, None, 0, pairs)
                elif by_position:
                    # As the adapter calls it: one list per call, by position.
                    listed[last] = (HEADER_MESSAGE_ID, key.encode())
                    produce(topic, bodies[i], key, -1, report, None, 0, listed if headers else None)
                elif headers:
                    produce(
                        topic,
                        bodies[i],
                        key,
                        on_delivery=report,
                        headers=[*pairs, (HEADER_MESSAGE_ID, key.encode())],
                    )
                else:
                    produce(topic, bodies[i], key, on_delivery=report)
            self._flush(producer)

    def _flush(self, producer: Any) -> None:
        if producer.flush(30) or self.failed:
            raise RuntimeError(f"raw producer: {self.failed[:1]}")

    def variants(self) -> dict[str, Sync]:
        return {
            "raw pipelined (bench baseline)": self.pipelined,
            "raw per call": lambda: self.per_call(False),
            "raw per call + 3 headers": lambda: self.per_call(True),
            "raw per call + 3 headers, by position": lambda: self.per_call(True, by_position=True),
            "raw per call + 2 headers (no message id), by position": lambda: self.per_call(
                True, by_position=True, message_id=False
            ),
            "raw per call + 3 headers, by position + only errors": lambda: self.per_call(
                True, self.only_errors, by_position=True
            ),
            "raw per call + 3 headers, by position + no callback": lambda: self.per_call(
                True, None, False, by_position=True
            ),
        }

    def produce_only(self, repeats: int) -> list[tuple[str, float]]:
        """This thread's CPU inside ``produce()`` alone (reports served apart, by
        ``flush`` outside the timing), µs per message, best of ``repeats``."""
        produce, topic, bodies, keys, report = (
            self.producer.produce,
            self.topic,
            self.bodies,
            self.keys,
            self.report,
        )
        pairs = self.pairs
        count = len(self.calls[0])
        call = self.calls[0]

        def keywords_no_headers() -> None:
            for i in call:
                produce(topic, bodies[i], keys[i], on_delivery=report)

        def position_no_headers() -> None:
            for i in call:
                produce(topic, bodies[i], keys[i], -1, report)

        def keywords_headers() -> None:
            for i in call:
                key = keys[i]
                produce(
                    topic,
                    bodies[i],
                    key,
                    on_delivery=report,
                    headers=[*pairs, (HEADER_MESSAGE_ID, key.encode())],
                )

        def position_headers() -> None:
            listed: list[tuple[str, bytes]] = [*pairs, (HEADER_MESSAGE_ID, b"")]
            for i in call:
                key = keys[i]
                listed[2] = (HEADER_MESSAGE_ID, key.encode())
                produce(topic, bodies[i], key, -1, report, None, 0, listed)

        def position_no_callback() -> None:
            for i in call:
                produce(topic, bodies[i], keys[i], -1)

        rows = {
            "produce(), keywords, no headers (the bench baseline's call)": keywords_no_headers,
            "produce(), by position, no headers": position_no_headers,
            "produce(), by position, no headers, no callback": position_no_callback,
            "produce(), keywords, 3 headers (a new list each)": keywords_headers,
            "produce(), by position, 3 headers (one list per call)": position_headers,
        }
        best: dict[str, float] = {}
        for _ in range(repeats):
            for name, run in rows.items():
                start = time.thread_time()
                run()
                used = (time.thread_time() - start) / count * 1e6
                best[name] = min(best.get(name, used), used)
                self._flush(self.producer)
        for burst in (1, 10):
            # As small calls make them: a burst into a producer idle for 2 ms
            # (its queues empty), reports served before the next; median.
            times: list[float] = []
            process = time.process_time()
            for n in range(300):
                start = time.thread_time()
                for i in call[:burst]:
                    produce(topic, bodies[i], f"{keys[i]}-{n}", -1, report)
                times.append((time.thread_time() - start) / burst * 1e6)
                self.producer.poll(0)
                time.sleep(0.002)
            self._flush(self.producer)
            process = (time.process_time() - process) / (300 * burst) * 1e6
            times.sort()
            best[f"produce(), {burst} a burst after 2 ms idle (median)"] = times[len(times) // 2]
            best[f"  the whole process per message, {burst} a burst every 2 ms"] = process
        return list(best.items())


def node_headers() -> dict[str, str]:
    return {HEADER_PRODUCER: "study-pub0", HEADER_PUBLISHED_AT: f"{time.time():.6f}"}


async def broker_variants(
    url: str, facts: Sequence[Fact], batch: int, repeats: int, only: list[str]
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Each variant's CPU µs per message (best of ``repeats``, interleaved), and
    the ``produce()``-only figures."""
    config = KafkaConfig.from_url(url)
    topic = f"study-pubcost-{uuid.uuid4().hex[:8]}"
    MADE.append(topic)
    transport = KafkaTransport(url)
    await transport.connect()
    bus = Bus(url, "memory://", topic=topic, node="study-pub0", consume=False)
    await bus.start()
    try:
        await transport.publish(topic, [Message(b"warm-up", "warm-up", "warm-up", {})])
        raw = await asyncio.to_thread(RawVariants, config, topic, facts, batch)
        chunks = [facts[i : i + batch] for i in range(0, len(facts), batch)]
        headers = node_headers()
        ready = [
            [Message(encode_one(f), f.hash, f.hash, headers) for f in chunk] for chunk in chunks
        ]

        async def transport_publish() -> None:
            for messages in ready:
                await transport.publish(topic, messages)

        async def bus_publish() -> None:
            for chunk in chunks:
                await bus.publish(*chunk, ancestors=False)

        variants: dict[str, Sync | Async] = dict(raw.variants())
        variants["KafkaTransport.publish (ready messages)"] = transport_publish
        variants["Bus.publish"] = bus_publish
        if only:
            variants = {k: v for k, v in variants.items() if any(k.startswith(o) for o in only)}
        best: dict[str, float] = {}
        for _ in range(repeats):
            for name, run in variants.items():
                start = time.process_time()
                if asyncio.iscoroutinefunction(run):
                    await run()
                else:
                    await asyncio.to_thread(run)
                used = (time.process_time() - start) / len(facts) * 1e6
                best[name] = min(best.get(name, used), used)
        produce_rows = await asyncio.to_thread(raw.produce_only, max(repeats, 7))
        return list(best.items()), produce_rows
    finally:
        await bus.aclose()
        await transport.aclose()


async def parts(facts: Sequence[Fact], batch: int) -> list[tuple[str, float]]:
    """The pieces of a publish call without the broker (µs per message, or per call)."""
    chunk = list(facts[:batch])
    n = len(chunk)
    refs = [f.ref for f in chunk]
    headers = node_headers()
    bodies = [encode_one(f) for f in chunk]
    rows = [
        ("encode_one (wire bytes cached)", best_cpu_us(lambda: [encode_one(f) for f in chunk], n)),
        (
            "Message(...) per envelope",
            best_cpu_us(
                lambda: [
                    Message(b, r[1], r[1], headers) for b, r in zip(bodies, refs, strict=True)
                ],
                n,
            ),
        ),
        ("fact.ref per fact", best_cpu_us(lambda: [f.ref for f in chunk], n)),
        (
            "headers list per record ([*pairs, (id, bytes)])",
            best_cpu_us(
                lambda: [
                    [*pairs, (HEADER_MESSAGE_ID, r[1].encode())]
                    for pairs in [[(k, v.encode()) for k, v in headers.items()]]
                    for r in refs
                ],
                n,
            ),
        ),
    ]
    store = MemoryStore()
    await store.open()

    async def record() -> None:
        async with store.transaction() as tx:
            await tx.record(StoreBatch(published=list(refs)))

    rows.append(("published refs into the memory store (one transaction)", 0.0))
    rows[-1] = (rows[-1][0], await best_cpu_us_async(record, n))
    loop = asyncio.get_running_loop()
    ready = threading.Event()
    wanted: list[asyncio.Future[None]] = []
    stop = False

    def settler() -> None:
        while True:
            ready.wait()
            ready.clear()
            if stop:
                return
            future = wanted.pop()
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=settler, daemon=True)
    thread.start()

    async def calls() -> None:
        for _ in range(200):
            future = loop.create_future()
            wanted.append(future)
            ready.set()
            await asyncio.wait_for(future, 60)

    per_call = await best_cpu_us_async(calls, 200)
    bus = Bus(_Idle("memory://study-idle"), "memory://", topic="t", node="study", consume=False)
    await bus.start()
    many = list(facts[: 20 * batch])

    async def bus_calls_of_batch() -> None:
        for start in range(0, len(many), batch):
            await bus.publish(*many[start : start + batch], ancestors=False)

    async def bus_calls_of_one() -> None:
        for fact in many[:2000]:
            await bus.publish(fact, ancestors=False)

    rows.append(
        (
            f"Bus.publish over a transport that does nothing, calls of {batch}, per message",
            await best_cpu_us_async(bus_calls_of_batch, len(many)),
        )
    )
    rows.append(
        (
            "Bus.publish over a transport that does nothing, calls of 1, per CALL",
            await best_cpu_us_async(bus_calls_of_one, 2000),
        )
    )
    await bus.aclose()
    stop = True
    ready.set()
    thread.join()
    rows.append(("future + call_soon_threadsafe (other thread) + wait_for, per CALL", per_call))
    return rows


async def small_calls(
    url: str, facts: Sequence[Fact], repeats: int
) -> list[tuple[str, float, float]]:
    """``Bus.publish`` of 1-3 facts a call: CPU µs per message and per call."""
    topic = f"study-pubcost-small-{uuid.uuid4().hex[:8]}"
    MADE.append(topic)
    bus = Bus(url, "memory://", topic=topic, node="study-pub0", consume=False)
    await bus.start()
    rows: list[tuple[str, float, float]] = []
    try:
        await bus.publish(facts[0], ancestors=False)
        total = min(len(facts), 3000)
        for size in (1, 2, 3):
            calls = [facts[i : i + size] for i in range(0, total - total % size, size)]

            async def sequential(calls: list[Sequence[Fact]] = calls) -> None:
                for call in calls:
                    await bus.publish(*call, ancestors=False)

            async def overlapped(calls: list[Sequence[Fact]] = calls) -> None:
                # Completion seen through done callbacks: O(1) per call (asyncio.wait
                # over the calls in flight would cost O(64) per call here).
                pending: set[asyncio.Task[Any]] = set()
                room = asyncio.Event()

                def done(task: asyncio.Task[Any]) -> None:
                    pending.discard(task)
                    room.set()

                for call in calls:
                    while len(pending) >= 64:
                        room.clear()
                        await room.wait()
                    task = asyncio.create_task(bus.publish(*call, ancestors=False))
                    pending.add(task)
                    task.add_done_callback(done)
                await asyncio.gather(*pending)

            count = len(calls) * size
            for name, run in (("one at a time", sequential), ("64 in flight", overlapped)):
                us = await best_cpu_us_async(run, count, repeats)
                rows.append((f"Bus.publish, {size} a call, {name}", us, us * size))
    finally:
        await bus.aclose()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="kafka://127.0.0.1:9092")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="also measure calls of 1-3")
    parser.add_argument("--no-parts", action="store_true")
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    workload = build_workload(WorkloadSpec(args.calls * args.batch))
    facts = workload.order
    _ = workload.bodies  # wire bytes computed, as the bench's raw phase leaves them
    print(f"# {len(facts)} facts, calls of {args.batch}, best of {args.repeats}", flush=True)
    try:
        await report(args, facts)
    finally:
        await asyncio.to_thread(delete_topics, args.url)


async def report(args: argparse.Namespace, facts: Sequence[Fact]) -> None:
    print("| variant | CPU µs/msg |\n|---|---:|")
    rows, produce_rows = await broker_variants(args.url, facts, args.batch, args.repeats, args.only)
    for name, us in rows:
        print(f"| {name} | {us:.2f} |", flush=True)
    print("\n| produce() alone (calling thread, reports apart) | CPU µs/msg |\n|---|---:|")
    for name, us in produce_rows:
        print(f"| {name} | {us:.2f} |", flush=True)
    if not args.no_parts:
        print("\n| part (no broker) | CPU µs |\n|---|---:|")
        for name, us in await parts(facts, args.batch):
            print(f"| {name} | {us:.3f} |", flush=True)
    if args.small:
        print("\n| small calls | CPU µs/msg | CPU µs/call |\n|---|---:|---:|")
        for name, per_msg, per_call in await small_calls(args.url, facts, args.repeats):
            print(f"| {name} | {per_msg:.1f} | {per_call:.1f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
