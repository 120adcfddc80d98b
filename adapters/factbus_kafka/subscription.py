"""One Kafka consumer-group member per subscription, owned by one thread.

:class:`KafkaSubscription` is the event-loop side: it buffers what its consumer
thread (:mod:`factbus_kafka.consumer`: consuming, back-pressure, rebalances)
hands over, as librdkafka's records, and hands them out: ``take_batch`` (what
``Bus`` consumes with) as one :class:`~factbus_kafka.delivery.KafkaBatch`,
``next_batch`` as :class:`~factbus_kafka.delivery.KafkaDelivery` objects made
then (:mod:`factbus_kafka.delivery`). What is acked or nacked becomes stored,
committed offsets and seeks in :mod:`factbus_kafka.offsets` (acknowledgement,
``nack(requeue=True)``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from typing import TYPE_CHECKING, Any, cast

import structlog

from factbus.errors import FatalTransportError
from factbus.transport.buffered import BufferedSubscription
from factbus_kafka._driver import Consumer, KafkaError, KafkaException, Message
from factbus_kafka.consumer import ConsumerThread
from factbus_kafka.delivery import KafkaBatch, KafkaDelivery
from factbus_kafka.offsets import OffsetBook, Partition, Run

if TYPE_CHECKING:
    from collections.abc import Callable

    from factbus_kafka.config import KafkaConfig

log = structlog.get_logger("factbus.kafka")


_value_of = Message.value
_partition_of = Message.partition


def _runs_of(numbers: list[int]) -> list[tuple[int, int, int]]:
    """``(partition, start, end)`` of each run of equal ``numbers``, in order."""
    if not numbers:
        return []
    first = numbers[0]
    if numbers.count(first) == len(numbers):  # one partition: the usual case
        return [(first, 0, len(numbers))]
    bounds: list[tuple[int, int, int]] = []
    start = 0
    for number, group in itertools.groupby(numbers):
        end = start + sum(1 for _ in group)
        bounds.append((number, start, end))
        start = end
    return bounds


_Buffered = Message | KafkaDelivery
"""What the buffer holds: records as received, and deliveries redelivered after a
nack (already made; see :meth:`KafkaSubscription._take`)."""


def _number(item: _Buffered) -> int:
    """The partition of a buffered item."""
    if isinstance(item, KafkaDelivery):
        return item._partition.number
    return item.partition() or 0


class KafkaSubscription(ConsumerThread, OffsetBook, BufferedSubscription[KafkaDelivery]):
    """A group member of one topic (see the module docstring).

    Concurrency: one task consumes (``next_batch``/iteration, ``ack``/``nack``);
    ``aclose`` may run concurrently with ``next_batch``. The consumer itself is
    used by the subscription's thread only.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topic: str,
        group: str,
        *,
        on_close: Callable[[KafkaSubscription], None] | None = None,
        logger: Any = None,
    ) -> None:
        super().__init__()
        self._iterate_batch = config.fetch_batch
        self.topic = topic
        self.group = group
        self._config = config
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        settings = config.consumer_settings(group)
        settings["error_cb"] = self._on_client_error
        if logger is not None:
            settings["logger"] = logger
        try:
            self._consumer = Consumer(settings)
        except (KafkaException, ValueError, TypeError) as exc:
            raise FatalTransportError(f"cannot create a Kafka consumer: {exc}") from exc
        # Loop-side state (and the buffer, see BufferedSubscription).
        self._partitions: dict[int, Partition] = {}
        self._joined: asyncio.Future[None] = self._loop.create_future()
        self._finished: asyncio.Future[None] = self._loop.create_future()
        # Shared with the thread, under _lock.
        self._lock = threading.Lock()
        self._to_store: dict[int, int] = {}
        self._seeks: dict[int, int] = {}
        # Thread-side state.
        self._stop = threading.Event()
        self._room = threading.Event()
        """Set by the event loop when the buffer has room for a ``fetch_batch``."""
        self._limit = config.max_buffered
        self._low = max(config.max_buffered - config.fetch_batch, config.max_buffered // 2)
        """Occupancy at or below which the thread takes records again."""
        self.pauses = 0
        """Times the thread paused the partitions because the buffer stayed full
        (each drops what librdkafka had prefetched); written by the thread."""
        self._handed = 0
        """Records the thread handed to the event loop (written by the thread only)."""
        self._arrived = 0
        """Records of those the event loop took in (written by the loop only)."""
        self._again_buffered = 0
        """Redelivered records (deliveries already) in the buffer (loop only): while
        there are none, :meth:`_take_batch` takes its fast path."""
        self._owned: set[int] = set()
        self._seek_attempts: dict[int, int] = {}
        self._thread = threading.Thread(
            target=self._run, name=f"factbus-kafka-{topic}-{group}", daemon=True
        )

    # -- life cycle (event loop) ---------------------------------------------------

    async def start(self) -> None:
        """Start the consumer thread and wait (at most ``join_timeout``) for the first
        partition assignment.

        :raises FatalTransportError: the consumer failed before it joined.
        """
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._joined), self._config.join_timeout)
        except TimeoutError:
            log.warning(
                "no partition assignment yet; continuing",
                topic=self.topic,
                group=self.group,
                waited=self._config.join_timeout,
            )

    async def aclose(self) -> None:
        """Stop consuming: store and commit what was acked, leave the group. Buffered and
        unacked deliveries go back to the group. Idempotent and concurrency-safe."""
        if not self._closed:
            self._close_buffer()
            self._stop.set()
            self._room.set()
            if not self._thread.is_alive() and not self._finished.done():
                self._finished.set_result(None)
            if self._on_close is not None:
                self._on_close(self)
        await asyncio.shield(self._finished)

    # -- events from the thread (event loop) ---------------------------------------

    def _receive(self, messages: list[Message]) -> None:
        """One batch from the thread (one ``call_soon_threadsafe`` per batch).

        The records are buffered as they came; their :class:`KafkaDelivery`
        objects are made when :meth:`_take` hands them out (see there). Per
        record only its error, partition and offset are read here; the
        partition's state is looked up once per run of records of one
        partition (librdkafka hands them over in runs).
        """
        self._arrived += len(messages)
        if self._closed:
            return
        partitions = self._partitions
        fresh: list[_Buffered] = []
        append = fresh.append
        partition: Partition | None = None
        number = -1
        next_offset = -1
        for message in messages:
            if message.error() is not None:
                self._on_message_error(message.error())  # type: ignore[arg-type]
                continue
            at: int = message.partition()  # type: ignore[assignment]
            if at != number or partition is None:  # a new run
                if partition is not None:
                    partition.next_offset = next_offset
                number = at
                partition = partitions.get(number)
                if partition is None:  # not announced by on_assign: track it anyway
                    partition = partitions[number] = Partition(number, self)
                next_offset = partition.next_offset
            offset: int = message.offset()  # type: ignore[assignment]
            if offset < next_offset:
                # Re-read after a seek: deliver again only what was nacked.
                again = partition.nacked.pop(offset, None)
                if again is not None:
                    again._again(message)
                    append(again)
                    self._again_buffered += 1
                continue
            append(message)
            next_offset = offset + 1
        if partition is not None:
            partition.next_offset = next_offset
        self._deliver(cast("list[KafkaDelivery]", fresh))  # records: see _take

    def _assigned(self, numbers: list[int]) -> None:
        for number in numbers:
            old = self._partitions.get(number)
            if old is not None:
                old.alive = False
            self._partitions[number] = Partition(number, self)
        if not self._joined.done():
            self._joined.set_result(None)

    def _occupancy(self) -> int:
        """Received records held: buffered, or handed over by the thread and not
        yet taken in by the event loop (read from either side)."""
        return self._handed - self._arrived + len(self._buffer)

    def _records(self) -> collections.deque[_Buffered]:
        """The buffer, as what it holds (records, and redelivered deliveries)."""
        return cast("collections.deque[_Buffered]", self._buffer)

    def _take(self, count: int) -> list[KafkaDelivery]:
        """Hand out ``count`` buffered records as deliveries, made now: a delivery
        lives from here to its ack (one step), not also while it waits in the
        buffer, so few of them outlive the collector's young generations (a
        delivery and its record waiting in a buffer of thousands were each
        promoted to the oldest generation, and made its full collections come
        more often). Each joins its partition's ``unsettled`` here: records of
        one partition leave the buffer in offset order, so the watermark never
        passes one still buffered (it has a higher offset than any taken)."""
        popleft = self._records().popleft
        partitions = self._partitions
        batch: list[KafkaDelivery] = []
        append = batch.append
        new = KafkaDelivery
        partition: Partition | None = None
        hold = collections.deque[KafkaDelivery]().append  # the run's partition's, below
        number = -1
        for _ in range(count):
            item = popleft()
            if isinstance(item, KafkaDelivery):  # redelivered: already in unsettled
                self._again_buffered -= 1
                append(item)
                continue
            at: int = item.partition()  # type: ignore[assignment]
            if at != number or partition is None:
                number = at
                partition = partitions.get(number)
                if partition is None:  # revoked meanwhile (withdrawn: never here)
                    continue
                hold = partition.unsettled.append
            delivery = new(item, partition, item.offset())  # type: ignore[arg-type]
            hold(delivery)
            append(delivery)
        if self._occupancy() <= self._low:
            self._room.set()  # the thread may be waiting for room
        return batch

    def _take_batch(self, count: int) -> KafkaBatch:
        """Hand out ``count`` buffered records as one :class:`KafkaBatch`: no
        delivery object per record, one :class:`Run` per run of records of one
        partition, joining its partition's ``unsettled`` here (records of one
        partition leave the buffer in offset order, as for :meth:`_take`).

        With no redelivered record buffered (nearly always), bodies and
        partitions are read with one C-level ``map`` each and runs are found
        from the partition numbers alone; otherwise record by record."""
        buffer = self._records()
        if self._again_buffered or count <= 0:
            batch = self._take_batch_slowly(count)
        else:
            if count >= len(buffer):
                items: list[Message] = list(buffer)  # type: ignore[arg-type]
                buffer.clear()
            else:
                popleft = buffer.popleft
                items = [popleft() for _ in range(count)]  # type: ignore[misc]
            batch = self._batch_of(items)
        if self._occupancy() <= self._low:
            self._room.set()  # the thread may be waiting for room
        return batch

    def _batch_of(self, items: list[Message]) -> KafkaBatch:
        """The batch of ``items``, records only (see :meth:`_take_batch`)."""
        numbers: list[int] = list(map(_partition_of, items))  # type: ignore[arg-type]
        partitions = self._partitions
        bounds = _runs_of(numbers)
        if any(number not in partitions for number, _, _ in bounds):
            # Revoked since they were buffered (withdrawn then: never here).
            kept = [i for i, number in enumerate(numbers) if number in partitions]
            items = [items[i] for i in kept]
            numbers = [numbers[i] for i in kept]
            bounds = _runs_of(numbers)
        bodies: list[bytes] = list(map(_value_of, items))  # type: ignore[arg-type]
        if None in bodies:  # a record without a value
            bodies = [body or b"" for body in bodies]
        runs: list[Run] = []
        for number, start, end in bounds:
            partition = partitions[number]
            run = Run(partition, start)
            run.end = end
            run.offset = items[end - 1].offset()  # type: ignore[assignment]
            run.pending = run.unhanded = end - start
            partition.unsettled.append(run)
            runs.append(run)
        return KafkaBatch(self, bodies, items, runs, {})  # type: ignore[arg-type]

    def _take_batch_slowly(self, count: int) -> KafkaBatch:
        """:meth:`_take_batch` record by record (redelivered records buffered)."""
        popleft = self._records().popleft
        partitions = self._partitions
        bodies: list[bytes] = []
        body = bodies.append
        items: list[Message | KafkaDelivery] = []
        item_ = items.append
        runs: list[Run] = []
        redelivered: dict[int, KafkaDelivery] = {}
        run: Run | None = None
        number = -1
        last: Message | None = None
        for _ in range(count):
            item = popleft()
            if isinstance(item, KafkaDelivery):  # redelivered: already in unsettled
                self._again_buffered -= 1
                if run is not None and last is not None:
                    run.end = len(items)
                    run.offset = last.offset()  # type: ignore[assignment]
                run = None
                redelivered[len(items)] = item
                item_(item)
                body(item.body)
                continue
            at: int = item.partition()  # type: ignore[assignment]
            if at != number or run is None:
                if run is not None and last is not None:
                    run.end = len(items)
                    run.offset = last.offset()  # type: ignore[assignment]
                number = at
                partition = partitions.get(number)
                if partition is None:  # revoked meanwhile (withdrawn: never here)
                    run = None
                    continue
                run = Run(partition, len(items))
                partition.unsettled.append(run)
                runs.append(run)
            last = item
            item_(item)
            body(item.value() or b"")
        if run is not None and last is not None:
            run.end = len(items)
            run.offset = last.offset()  # type: ignore[assignment]
        for run in runs:
            run.pending = run.unhanded = run.end - run.start
        return KafkaBatch(self, bodies, items, runs, redelivered)

    def _revoked(self, numbers: list[int]) -> None:
        gone = set()
        for number in numbers:
            partition = self._partitions.pop(number, None)
            if partition is not None:
                partition.alive = False
                gone.add(number)
        if gone:
            self._withdraw(lambda item: _number(item) not in gone)
            self._again_buffered = sum(isinstance(i, KafkaDelivery) for i in self._records())
            if self._occupancy() <= self._low:
                self._room.set()

    def _failed(self, error: BaseException) -> None:
        failure = FatalTransportError(f"kafka consumer failed: {error}")
        failure.__cause__ = error
        self._fail(failure)
        if not self._joined.done():
            self._joined.set_exception(FatalTransportError(f"kafka consumer failed: {error}"))
            self._joined.exception()  # retrieved: start() may have stopped waiting

    def _ended(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    def _on_message_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._failed(KafkaException(error))
        else:
            log.warning(
                "kafka consumer error", topic=self.topic, group=self.group, error=str(error)
            )

    def __repr__(self) -> str:
        return f"KafkaSubscription(topic={self.topic!r}, group={self.group!r})"
