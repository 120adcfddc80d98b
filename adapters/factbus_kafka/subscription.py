"""One Kafka consumer-group member per subscription, owned by one thread.

librdkafka's consumer is not safe to share between threads, and it must be
polled continuously to take part in rebalances (a member that stops polling
holds up every join of its group). So each :class:`KafkaSubscription` runs a
dedicated thread that alone touches its ``Consumer``: it consumes (waits up
to ``poll_interval`` for one message, then takes what librdkafka has queued,
up to ``fetch_batch``; never waits for a full batch), serves rebalance
callbacks, stores acknowledged offsets, seeks for nacks, holds back when the
buffer is full and finally commits and closes. Batches reach the event loop with one
``call_soon_threadsafe`` each and are buffered as librdkafka's records, which
the thread first takes out of the cyclic garbage collector's lists when the
native helper is in use (:data:`~factbus_kafka._driver.untrack_records`: a
record cannot be part of a reference cycle, and a backlog of tracked records
was most of what full collections walked, benchmarks/studies/PROFILE.md §25-§26).
``take_batch`` (what ``Bus`` consumes with) hands them out as one
:class:`KafkaBatch`: their bodies as one list, and per run of records of one
partition one :class:`_Run` that the batch's single ack settles; a record gets
a :class:`KafkaDelivery` of its own only when the step asks for it (a rejected
envelope) or the batch is nacked (benchmarks/studies/PROFILE.md §21).
``next_batch`` hands records out as deliveries, each made then, so that a
delivery lives for one step, not also while it waits in the buffer (§16).

Back-pressure: the subscription holds at most ``max_buffered`` received
records (in its buffer or on their way to it). When full, the thread stops
taking records from librdkafka and waits (up to ``heartbeat_interval``) for
``next_batch`` to make room for a ``fetch_batch``; librdkafka's own queue,
bounded by ``prefetch_kbytes``, then fills and its fetching stops. Only when
the buffer stays full that long are the partitions paused, so that the thread
can go on serving rebalances: a pause drops what librdkafka had prefetched,
which it fetches again on resume, so pausing at every full buffer (as this
did) fetched most of a backlog twice. A rebalance that comes while the thread
waits is served up to ``heartbeat_interval`` later.

Acknowledgement: Kafka commits a position, not single messages. Each assigned
partition keeps what was handed out and is unsettled in offset order: single
deliveries, and runs of a batch (a run is settled once every record in it is:
by the batch's ack, or by the acks of the deliveries made from it); an ack
moves the partition's watermark past every leading settled one, and only that
watermark (the last offset + 1) is stored, so an out-of-order ack never skips
a message that is still unsettled. Stored offsets are committed every
``commit_interval`` (librdkafka's auto commit of stored offsets), synchronously
when partitions are revoked, and when the subscription closes.

``nack(requeue=True)``: Kafka cannot requeue one message. The adapter seeks the
partition back to the nacked offset; when the records come again, only the
nacked ones are delivered again (``redelivered=True``) and the others, already
delivered, are skipped. The watermark cannot pass a nacked message until its
redelivery is acked, so after a crash it comes again anyway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
from typing import TYPE_CHECKING, Any, cast

import structlog

from factbus.errors import FatalTransportError, TransportError
from factbus.transport.base import DeliveryBatch
from factbus.transport.buffered import BufferedSubscription, SettleOnce
from factbus_kafka._driver import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
    decode_record_headers,
    untrack_records,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from factbus_kafka.config import KafkaConfig

log = structlog.get_logger("factbus.kafka")

_PENDING, _ACKED, _NACKED = 0, 1, 2
_SEEK_ATTEMPTS = 50


class _Partition:
    """One assigned partition during one assignment (a new object per assignment)."""

    __slots__ = ("alive", "nacked", "next_offset", "number", "owner", "unsettled")

    def __init__(self, number: int, owner: KafkaSubscription) -> None:
        self.number = number
        self.owner = owner
        self.alive = True
        self.unsettled: collections.deque[KafkaDelivery | _Run] = collections.deque()
        """Deliveries handed out by ``next_batch`` (:meth:`KafkaSubscription._take`)
        and runs of batches (:meth:`KafkaSubscription._take_batch`) not yet passed
        by the watermark, in offset order; records still buffered are not here
        (they have higher offsets than any taken)."""
        self.next_offset = -1
        """One past the highest offset received in this assignment."""
        self.nacked: dict[int, KafkaDelivery] = {}
        """Nacked deliveries waiting for their record to come again after the seek."""


class _Run:
    """Consecutive records of one partition in one :class:`KafkaBatch`, settled as
    one: ``_state`` becomes acked once ``pending`` (its records not yet acked)
    reaches 0. ``offset`` is its last record's, as a delivery's is its own, so
    the watermark treats both alike (:meth:`KafkaSubscription._advance`)."""

    __slots__ = (
        "_state",
        "children",
        "end",
        "offset",
        "partition",
        "pending",
        "rest_acked",
        "start",
        "unhanded",
    )

    def __init__(self, partition: _Partition, start: int) -> None:
        self.partition = partition
        self._state = _PENDING
        self.start = start
        """Its first record's index in the batch."""
        self.end = start
        """One past its last record's index in the batch."""
        self.offset = -1
        self.pending = 0
        """Its records not yet acked."""
        self.unhanded = 0
        """Its records the batch has not handed out as deliveries (the batch's ack
        acks those)."""
        self.rest_acked = False
        """The batch acked (its records not handed out are)."""
        self.children: list[KafkaDelivery] = []
        """The deliveries handed out from it (made by ``KafkaBatch.delivery``)."""

    def resume_at(self) -> int:
        """Once :attr:`rest_acked` (or every record handed out) and not yet
        settled: the lowest offset of its handed-out deliveries still unsettled
        (the partition's commit may go up to it, not past it)."""
        return min((c.offset for c in self.children if c._state != _ACKED), default=self.offset + 1)

    def acked(self, count: int) -> None:
        """``count`` more of its records were acked."""
        self.pending -= count
        if self.pending <= 0:
            self._state = _ACKED


class KafkaDelivery(SettleOnce):
    """One received Kafka record. ``ack``/``nack`` only touch local state (no I/O).

    ``body`` is read from the record when the delivery is made, as ``next_batch``
    hands it out (every delivery's body is read once, by the pipeline); headers
    are decoded on first access.

    One of these is made per received record, on the event loop, so it is kept
    small: five slots are written when it is made; ``_state`` alone says
    whether it was settled (SettleOnce's ``_settled`` is not used), and
    ``_headers``/``_redelivered`` stay unset until needed (read through
    properties that fall back to their defaults).
    """

    __slots__ = (
        "_headers",
        "_message",
        "_partition",
        "_redelivered",
        "_run",
        "_state",
        "body",
        "offset",
    )

    _headers: dict[str, str]
    _redelivered: bool

    def __init__(
        self, message: Message, partition: _Partition, offset: int, run: _Run | None = None
    ) -> None:
        self._message = message
        self._partition = partition
        self._state = _PENDING
        self.body: bytes = message.value() or b""
        self.offset = offset
        self._run = run
        """The batch's run it was made from (its ack counts there; the run, not
        the delivery, is in the partition's ``unsettled``), else ``None``."""

    @property
    def headers(self) -> Mapping[str, str]:
        try:
            return self._headers
        except AttributeError:
            headers = self._headers = decode_record_headers(self._message)
            return headers

    @property
    def redelivered(self) -> bool:
        """True only for a record delivered again after ``nack(requeue=True)`` in this
        subscription (Kafka keeps no delivery count)."""
        try:
            return self._redelivered
        except AttributeError:
            return False

    @property
    def partition(self) -> int:
        return self._partition.number

    def _settle_once(self) -> None:
        """Refuse a second ``ack``/``nack`` (``_state`` says it: see the class docstring).

        :raises TransportError: it was acked or nacked before.
        """
        if self._state != _PENDING:
            raise TransportError("delivery already acked or nacked")

    async def ack(self) -> None:
        self._partition.owner._settle(self, _ACKED)

    def ack_inline(self) -> None:
        """``ack`` as a plain call (it does no I/O), which
        :func:`~factbus.transport.ack_all` uses instead of a coroutine per delivery.

        :raises TransportError: it was acked or nacked before.
        """
        self._partition.owner._settle(self, _ACKED)

    @staticmethod
    def ack_inline_all(deliveries: Sequence[KafkaDelivery]) -> None:
        """:meth:`ack_inline` of each, in order, in one call (what
        :func:`~factbus.transport.ack_all` uses for a step): each partition's
        watermark moves once, after its deliveries are marked.

        :raises TransportError: one was acked or nacked before (those before it
            in ``deliveries`` are acked, it and those after it are not).
        """
        touched: dict[_Partition, None] = {}
        last: _Partition | None = None
        try:
            for delivery in deliveries:
                if delivery._state != _PENDING:
                    raise TransportError("delivery already acked or nacked")
                delivery._state = _ACKED
                if delivery._run is not None:
                    delivery._run.acked(1)
                partition = delivery._partition
                if partition is not last:  # records come in runs per partition
                    touched[partition] = None
                    last = partition
        finally:
            for partition in touched:
                partition.owner._advance(partition)

    async def nack(self, requeue: bool = True) -> None:
        self._partition.owner._settle(self, _NACKED if requeue else _ACKED)

    def _again(self, message: Message) -> None:
        self._message = message
        self.body = message.value() or b""
        self._state = _PENDING
        self._redelivered = True
        with contextlib.suppress(AttributeError):
            del self._headers


class KafkaBatch(DeliveryBatch):
    """What :meth:`KafkaSubscription.take_batch` hands out: the records' bodies,
    the records themselves (for :meth:`delivery`: headers, a nack), and the runs
    of records per partition that :meth:`ack` settles with one count each.
    Records redelivered after a nack come as the deliveries they already are
    (their own place in ``unsettled``); the batch settles them like the rest."""

    __slots__ = ("_handed", "_items", "_owner", "_redelivered", "_runs")

    def __init__(
        self,
        owner: KafkaSubscription,
        bodies: list[bytes],
        items: list[Message | KafkaDelivery],
        runs: list[_Run],
        redelivered: dict[int, KafkaDelivery],
    ) -> None:
        super().__init__(bodies)
        self._owner = owner
        self._items = items
        self._runs = runs
        self._redelivered = redelivered
        self._handed: dict[int, KafkaDelivery] = {}

    def delivery(self, index: int) -> KafkaDelivery:
        handed = self._handed.get(index)
        if handed is not None:
            return handed
        item = self._items[index]
        if isinstance(item, KafkaDelivery):
            handed = item
        else:
            run = next(r for r in self._runs if r.start <= index < r.end)
            run.unhanded -= 1
            handed = KafkaDelivery(item, run.partition, item.offset(), run)  # type: ignore[arg-type]
            run.children.append(handed)
        self._handed[index] = handed
        return handed

    def extend(self, more: DeliveryBatch) -> None:
        if not more:
            return
        if not isinstance(more, KafkaBatch) or more._owner is not self._owner:
            raise TypeError("a KafkaBatch extends only with one of the same subscription")
        shift = len(self._items)
        for run in more._runs:
            run.start += shift
            run.end += shift
        self.bodies += more.bodies
        self._items += more._items
        self._runs += more._runs
        self._redelivered.update({i + shift: d for i, d in more._redelivered.items()})

    async def ack(self) -> None:
        self.ack_inline()

    def ack_inline(self) -> None:
        """:meth:`ack` as a plain call (it does no I/O): each run's records not
        handed out count as acked, each partition's watermark moves once.

        :raises TransportError: the batch was acked or nacked before, or a
            redelivered record in it was settled by other means.
        """
        self._settling()
        touched: dict[_Partition, None] = {}
        handed = self._handed
        for index, delivery in self._redelivered.items():
            if index in handed:
                continue
            if delivery._state != _PENDING:
                raise TransportError("delivery already acked or nacked")
            delivery._state = _ACKED
            if delivery._run is not None:
                delivery._run.acked(1)
            touched[delivery._partition] = None
        for run in self._runs:
            run.rest_acked = True
            if run.unhanded:
                run.acked(run.unhanded)
                run.unhanded = 0
            touched[run.partition] = None
        advance = self._owner._advance
        for partition in touched:
            advance(partition)

    async def nack(self, requeue: bool = True) -> None:
        self._settling()
        settle = self._owner._settle
        for index in range(len(self._items)):
            delivery = self.delivery(index)
            if delivery._state == _PENDING:
                settle(delivery, _NACKED if requeue else _ACKED)


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


class KafkaSubscription(BufferedSubscription[KafkaDelivery]):
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
        self._partitions: dict[int, _Partition] = {}
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

    # -- acknowledgement (event loop) ----------------------------------------------

    def _settle(self, delivery: KafkaDelivery, state: int) -> None:
        if delivery._state != _PENDING:
            raise TransportError("delivery already acked or nacked")
        delivery._state = state
        partition = delivery._partition
        if state == _NACKED:
            if not partition.alive or self._closed:
                return  # the partition went to another member: it redelivers from the commit
            offset = delivery.offset
            partition.nacked[offset] = delivery
            with self._lock:
                current = self._seeks.get(partition.number)
                if current is None or offset < current:
                    self._seeks[partition.number] = offset
            return
        if delivery._run is not None:
            delivery._run.acked(1)
        self._advance(partition)

    def _advance(self, partition: _Partition) -> None:
        """Move ``partition``'s watermark past its leading acked deliveries and runs,
        and have the thread store it."""
        if not partition.alive or self._closed:
            return  # the partition went to another member; it redelivers from the last commit
        unsettled = partition.unsettled
        at = -1
        while unsettled and unsettled[0]._state == _ACKED:
            at = unsettled.popleft().offset + 1
        if unsettled:
            head = unsettled[0]
            if type(head) is _Run and (head.rest_acked or not head.unhanded):
                # Every record not handed out is acked (or none is left): up to
                # the first handed-out one still unsettled.
                at = head.resume_at()
        if at >= 0:
            with self._lock:
                self._to_store[partition.number] = at

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
        partition: _Partition | None = None
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
                    partition = partitions[number] = _Partition(number, self)
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
            self._partitions[number] = _Partition(number, self)
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
        partition: _Partition | None = None
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
        delivery object per record, one :class:`_Run` per run of records of one
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
        runs: list[_Run] = []
        for number, start, end in bounds:
            partition = partitions[number]
            run = _Run(partition, start)
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
        runs: list[_Run] = []
        redelivered: dict[int, KafkaDelivery] = {}
        run: _Run | None = None
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
                run = _Run(partition, len(items))
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

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        """From the thread: run ``callback`` on the event loop (dropped once it closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- the consumer thread --------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        config = self._config
        untrack = untrack_records
        limit, low = self._limit, self._low
        paused = False
        try:
            consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._stop.is_set():
                try:
                    self._apply(consumer)
                    if not paused and self._occupancy() >= limit and not self._wait_for_room():
                        # Still full: pause, so that consume() keeps serving rebalances.
                        consumer.pause(consumer.assignment())
                        paused = True
                        self.pauses += 1
                    elif paused and self._occupancy() <= low:
                        consumer.resume(consumer.assignment())
                        paused = False
                    if self._stop.is_set():
                        break
                    # librdkafka's batch consume waits until it has fetch_batch
                    # messages or the timeout passes, so below fetch_batch per
                    # poll_interval every message would wait up to poll_interval.
                    # Wait for the first message only, then take what is queued.
                    # Never more than the buffer has room for (paused: 0, but a
                    # consume() call is what serves rebalances).
                    room = min(config.fetch_batch, max(limit - self._occupancy(), 1))
                    messages = consumer.consume(1, config.poll_interval)
                    if messages and room > 1:
                        messages.extend(consumer.consume(room - 1, 0))
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    if not isinstance(error, KafkaError) or error.fatal():
                        raise
                    log.warning("kafka consumer error", topic=self.topic, error=str(exc))
                    self._stop.wait(config.poll_interval)  # librdkafka recovers by itself
                    continue
                if messages:
                    if untrack is not None:
                        # Out of the collector's lists before they wait in the
                        # buffer (benchmarks/studies/PROFILE.md §25, §26).
                        untrack(messages)
                    self._handed += len(messages)
                    self._call(self._receive, messages)
        except BaseException as exc:  # surfaced by next_batch
            self._call(self._failed, exc)
        finally:
            self._shut_down(consumer)
            self._call(self._ended)

    def _wait_for_room(self) -> bool:
        """Thread: wait (at most ``heartbeat_interval``) until the event loop has
        made room (see the module docstring); whether it did."""
        self._room.clear()
        if self._occupancy() <= self._low:  # made room meanwhile
            return True
        self._room.wait(self._config.heartbeat_interval)
        return self._occupancy() <= self._low

    def _shut_down(self, consumer: Consumer) -> None:
        try:
            self._apply(consumer)
            self._commit(consumer)
            consumer.close()
        except Exception as exc:
            log.warning("closing the kafka consumer failed", topic=self.topic, error=str(exc))

    def _apply(self, consumer: Consumer) -> None:
        """Store acknowledged offsets and perform requested seeks (thread only)."""
        with self._lock:
            stores, self._to_store = self._to_store, {}
            seeks, self._seeks = self._seeks, {}
        owned = self._owned
        if stores:
            offsets = [
                TopicPartition(self.topic, number, offset)
                for number, offset in stores.items()
                if number in owned
            ]
            if offsets:
                try:
                    consumer.store_offsets(offsets=offsets)
                except KafkaException as exc:
                    log.warning("storing kafka offsets failed", topic=self.topic, error=str(exc))
        for number, offset in seeks.items():
            if number not in owned:
                continue
            try:
                consumer.seek(TopicPartition(self.topic, number, offset))
                self._seek_attempts.pop(number, None)
            except KafkaException as exc:
                attempts = self._seek_attempts.get(number, 0) + 1
                self._seek_attempts[number] = attempts
                if attempts >= _SEEK_ATTEMPTS:
                    log.error(
                        "kafka seek failed; nacked message comes again after a "
                        "rebalance or restart",
                        topic=self.topic,
                        error=str(exc),
                    )
                    continue
                with self._lock:  # retry on the next turn
                    current = self._seeks.get(number)
                    if current is None or offset < current:
                        self._seeks[number] = offset

    def _commit(self, consumer: Consumer) -> None:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET):
                log.warning("committing kafka offsets failed", topic=self.topic, error=str(exc))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._owned.update(numbers)
        self._call(self._assigned, numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        # Commit what was acked before another member takes these partitions.
        self._apply(consumer)
        if numbers:
            self._commit(consumer)
        self._owned.difference_update(numbers)
        self._call(self._revoked, numbers)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._owned.difference_update(numbers)
        self._call(self._revoked, numbers)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._call(self._failed, KafkaException(error))
        else:
            log.debug("kafka consumer connection event", topic=self.topic, error=str(error))

    def __repr__(self) -> str:
        return f"KafkaSubscription(topic={self.topic!r}, group={self.group!r})"
