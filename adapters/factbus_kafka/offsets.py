"""Kafka acknowledgement: from settled deliveries to stored and committed offsets.

Kafka commits a position, not single messages. Each assigned
partition (:class:`Partition`) keeps what was handed out and is unsettled in
offset order: single deliveries, and runs of a batch (a :class:`Run` is settled
once every record in it is: by the batch's ack, or by the acks of the deliveries
made from it); an ack moves the partition's watermark past every leading settled
one, and only that watermark (the last offset + 1) is stored, so an out-of-order
ack never skips a message that is still unsettled. Stored offsets are committed
every ``commit_interval`` (librdkafka's auto commit of stored offsets),
synchronously when partitions are revoked, and when the subscription closes.

``nack(requeue=True)``: Kafka cannot requeue one message. The adapter seeks the
partition back to the nacked offset; when the records come again, only the
nacked ones are delivered again (``redelivered=True``) and the others, already
delivered, are skipped. The watermark cannot pass a nacked message until its
redelivery is acked, so after a crash it comes again anyway.

:class:`OffsetBook` is this part of :class:`~factbus_kafka.subscription.KafkaSubscription`:
the event loop marks settlements and moves watermarks (:meth:`OffsetBook._settle`,
:meth:`OffsetBook._advance`), the consumer thread stores them, seeks and commits
(:meth:`OffsetBook._apply`, :meth:`OffsetBook._commit`); they meet in
``_to_store`` and ``_seeks`` under ``_lock``.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

import structlog

from factbus.errors import TransportError
from factbus_kafka._driver import Consumer, KafkaError, KafkaException, TopicPartition

if TYPE_CHECKING:
    from factbus_kafka.delivery import KafkaDelivery

log = structlog.get_logger("factbus.kafka")

PENDING, ACKED, NACKED = 0, 1, 2
"""A delivery's or run's ``_state``."""
SEEK_ATTEMPTS = 50
"""Turns of the consumer thread a failing seek is tried again."""


class Partition:
    """One assigned partition during one assignment (a new object per assignment)."""

    __slots__ = ("alive", "nacked", "next_offset", "number", "owner", "unsettled")

    def __init__(self, number: int, owner: OffsetBook) -> None:
        self.number = number
        self.owner = owner
        self.alive = True
        self.unsettled: collections.deque[KafkaDelivery | Run] = collections.deque()
        """Deliveries handed out by ``next_batch`` (:meth:`KafkaSubscription._take`)
        and runs of batches (:meth:`KafkaSubscription._take_batch`) not yet passed
        by the watermark, in offset order; records still buffered are not here
        (they have higher offsets than any taken)."""
        self.next_offset = -1
        """One past the highest offset received in this assignment."""
        self.nacked: dict[int, KafkaDelivery] = {}
        """Nacked deliveries waiting for their record to come again after the seek."""


class Run:
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

    def __init__(self, partition: Partition, start: int) -> None:
        self.partition = partition
        self._state = PENDING
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
        return min((c.offset for c in self.children if c._state != ACKED), default=self.offset + 1)

    def acked(self, count: int) -> None:
        """``count`` more of its records were acked."""
        self.pending -= count
        if self.pending <= 0:
            self._state = ACKED


class OffsetBook:
    """The acknowledgement bookkeeping of a :class:`KafkaSubscription` (see the
    module docstring); a base of that class only, which owns the state below."""

    topic: str
    _closed: bool
    _lock: threading.Lock
    _to_store: dict[int, int]
    """Partition -> offset to store next (written by the loop, under ``_lock``)."""
    _seeks: dict[int, int]
    """Partition -> offset to seek to (written by the loop, under ``_lock``)."""
    _owned: set[int]
    """Partitions assigned to the consumer (thread only)."""
    _seek_attempts: dict[int, int]

    # -- the event loop ---------------------------------------------------------------

    def _settle(self, delivery: KafkaDelivery, state: int) -> None:
        if delivery._state != PENDING:
            raise TransportError("delivery already acked or nacked")
        delivery._state = state
        partition = delivery._partition
        if state == NACKED:
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

    def _advance(self, partition: Partition) -> None:
        """Move ``partition``'s watermark past its leading acked deliveries and runs,
        and have the thread store it."""
        if not partition.alive or self._closed:
            return  # the partition went to another member; it redelivers from the last commit
        unsettled = partition.unsettled
        at = -1
        while unsettled and unsettled[0]._state == ACKED:
            at = unsettled.popleft().offset + 1
        if unsettled:
            head = unsettled[0]
            if type(head) is Run and (head.rest_acked or not head.unhanded):
                # Every record not handed out is acked (or none is left): up to
                # the first handed-out one still unsettled.
                at = head.resume_at()
        if at >= 0:
            with self._lock:
                self._to_store[partition.number] = at

    # -- the consumer thread ------------------------------------------------------------

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
                if attempts >= SEEK_ATTEMPTS:
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
