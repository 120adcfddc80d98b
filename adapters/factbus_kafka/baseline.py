"""``kafka://`` baseline: confluent-kafka's ``Producer`` and ``Consumer``.

Same topic layout and client settings as the factbus adapter, taken from the
same URL (:class:`factbus_kafka.config.KafkaConfig`): ``partitions`` partitions,
an idempotent producer with ``acks=all``, a consumer group starting at the
earliest offset. The producer produces every message keyed by its id (the
fact hash, as the Bus does), serves delivery reports with ``poll(0)`` after
each chunk and ``flush()`` at the end, counting failed reports (one warm-up
message first, untimed and not counted: factbus's publishers are warm too); the consumer
calls ``consume(num_messages=1000)`` in a loop with offsets stored on receipt
and committed automatically (the client's defaults). Both run in a thread:
the client is blocking.

``subscribe`` returns once every partition is assigned; what the consumer
received while waiting for that is held and counted by ``consume``, so a
drain timed from ``subscribe``'s return (as the bench times factbus's, from
``Bus.start()``) counts every message and the fetching of all of them
(docs/decisions.md, "Drain measurement"). The consumer uses the factbus
adapter's settings (prefetch bounded by ``prefetch_kbytes``), never more
prefetch than a default client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from factbus.bench.baseline import Arrivals
from factbus.errors import MissingDriver, PublishError, TransportError
from factbus_kafka import removal
from factbus_kafka.config import KafkaConfig

try:
    import confluent_kafka
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingDriver("kafka", "kafka") from error


WARM_UP_KEY = b"factbus-bench-warm-up"
"""Key of the one message the producer sends before it is timed; not counted."""


class KafkaBaseline(Arrivals):
    """See the module docstring."""

    def __init__(self, url: str, destination: str) -> None:
        self.config = KafkaConfig.from_url(url)
        self.topic = destination
        self.group = f"{destination}.raw"
        self.client = f"confluent-kafka {confluent_kafka.version()} (acks=all, idempotent)"
        self._consumer: Any = None
        self.produce_cpu_s: float | None = None
        """CPU seconds of this process (every thread) over ``produce``'s timed
        window, from its first message to the last delivery report."""
        self._held: list[Any] = []
        """Messages received while ``subscribe`` waited for the assignment."""

    def _admin(self) -> Any:
        return AdminClient(self.config.admin())

    async def setup(self, subscribe: bool = True) -> None:
        await asyncio.to_thread(self._create)
        if subscribe:
            await self.subscribe()

    def _create(self) -> None:
        admin = self._admin()  # must outlive its futures
        futures = admin.create_topics(
            [NewTopic(self.topic, self.config.partitions, self.config.replication_factor)],
            request_timeout=self.config.request_timeout,
        )
        for future in futures.values():
            future.result(timeout=self.config.request_timeout)

    async def subscribe(self) -> None:
        await asyncio.to_thread(self._subscribe)

    def _subscribe(self) -> None:
        settings = self.config.consumer_settings(self.group)
        settings["enable.auto.offset.store"] = True  # the client's default
        consumer = Consumer(settings)
        assigned: set[int] = set()

        def on_assign(_consumer: Any, partitions: list[Any]) -> None:
            assigned.update(p.partition for p in partitions)

        consumer.subscribe([self.topic], on_assign=on_assign)
        deadline = time.monotonic() + max(30.0, self.config.join_timeout)
        while len(assigned) < self.config.partitions:
            if time.monotonic() > deadline:
                consumer.close()
                raise TransportError(f"raw consumer got no assignment for {self.topic}")
            self._held.extend(consumer.consume(num_messages=100, timeout=0.1))
        self._consumer = consumer

    async def produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        return await asyncio.to_thread(self._produce, bodies, keys, chunks)

    def _produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        producer = Producer(self.config.producer_settings())
        failed: list[str] = []

        def report(error: Any, _message: Any) -> None:
            if error is not None:
                failed.append(str(error))

        topic = self.topic
        producer.list_topics(topic, timeout=self.config.request_timeout)  # connect first
        # A new idempotent producer's first message waits for its producer id: ~0.5 s
        # in one run of three here, which made the raw end-to-end rate 30k or 190k
        # msgs/s at random. factbus's publishers are warm by then; so is this one.
        producer.produce(topic, b"", WARM_UP_KEY, on_delivery=report)
        producer.flush(self.config.publish_timeout)
        start, cpu = time.perf_counter(), time.process_time()
        for chunk in chunks:
            for i in chunk:
                while True:
                    try:
                        producer.produce(topic, bodies[i], keys[i], on_delivery=report)
                        break
                    except BufferError:
                        producer.poll(0.01)  # local queue full: serve reports, retry
            producer.poll(0)
        left = producer.flush(self.config.publish_timeout)
        end = time.perf_counter()
        self.produce_cpu_s = time.process_time() - cpu
        if left or failed:
            raise PublishError(f"raw producer: {left} unconfirmed, {len(failed)} failed")
        return start, end

    async def consume(self, count: int, timeout: float) -> float:
        return await asyncio.to_thread(self._consume, count, timeout)

    def _consume(self, count: int, timeout: float) -> float:
        consumer = self._consumer
        if consumer is None:
            raise TransportError("setup() first")
        deadline = time.monotonic() + timeout
        last = time.perf_counter()
        held, self._held = self._held, []
        if self._count(held):
            last = time.perf_counter()
        while self.received < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer got {self.received} of {count}")
            if self._count(consumer.consume(num_messages=1000, timeout=0.1)):
                last = time.perf_counter()
        return last

    def _count(self, messages: list[Any]) -> bool:
        counted = False
        for message in messages:
            if message.error() is None and message.key() != WARM_UP_KEY:
                message.value()
                self.arrived()
                counted = True
        return counted

    async def teardown(self, remove: bool = True) -> list[str]:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(consumer.close)
        if not remove:
            return []
        try:
            done = await asyncio.to_thread(
                removal.delete,
                self._admin(),
                [self.topic],
                [self.group],
                self.config.request_timeout,
            )
        except Exception as error:
            return [f"kafka topic {self.topic!r} and group {self.group!r}: {error}"]
        return done.left
