"""What a Kafka subscription hands out: :class:`KafkaDelivery` and :class:`KafkaBatch`.

``take_batch`` (what ``Bus`` consumes with) hands records out as one
:class:`KafkaBatch`: their bodies as one list, and per run of records of one
partition one :class:`~factbus_kafka.offsets.Run` that the batch's single ack
settles; a record gets a :class:`KafkaDelivery` of its own only when the step
asks for it (a rejected envelope) or the batch is nacked
(benchmarks/studies/PROFILE.md §21). ``next_batch`` hands records out as
deliveries, each made then, so that a delivery lives for one step, not also
while it waits in the buffer (§16). Settling touches local state only: the
watermark (:mod:`factbus_kafka.offsets`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from factbus.errors import TransportError
from factbus.transport.base import DeliveryBatch
from factbus.transport.buffered import SettleOnce
from factbus_kafka._driver import Message, decode_record_headers
from factbus_kafka.offsets import ACKED, NACKED, PENDING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from factbus_kafka.offsets import OffsetBook, Partition, Run


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
        self, message: Message, partition: Partition, offset: int, run: Run | None = None
    ) -> None:
        self._message = message
        self._partition = partition
        self._state = PENDING
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
        if self._state != PENDING:
            raise TransportError("delivery already acked or nacked")

    async def ack(self) -> None:
        self._partition.owner._settle(self, ACKED)

    def ack_inline(self) -> None:
        """``ack`` as a plain call (it does no I/O), which
        :func:`~factbus.transport.ack_all` uses instead of a coroutine per delivery.

        :raises TransportError: it was acked or nacked before.
        """
        self._partition.owner._settle(self, ACKED)

    @staticmethod
    def ack_inline_all(deliveries: Sequence[KafkaDelivery]) -> None:
        """:meth:`ack_inline` of each, in order, in one call (what
        :func:`~factbus.transport.ack_all` uses for a step): each partition's
        watermark moves once, after its deliveries are marked.

        :raises TransportError: one was acked or nacked before (those before it
            in ``deliveries`` are acked, it and those after it are not).
        """
        touched: dict[Partition, None] = {}
        last: Partition | None = None
        try:
            for delivery in deliveries:
                if delivery._state != PENDING:
                    raise TransportError("delivery already acked or nacked")
                delivery._state = ACKED
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
        self._partition.owner._settle(self, NACKED if requeue else ACKED)

    def _again(self, message: Message) -> None:
        self._message = message
        self.body = message.value() or b""
        self._state = PENDING
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
        owner: OffsetBook,
        bodies: list[bytes],
        items: list[Message | KafkaDelivery],
        runs: list[Run],
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
        touched: dict[Partition, None] = {}
        handed = self._handed
        for index, delivery in self._redelivered.items():
            if index in handed:
                continue
            if delivery._state != PENDING:
                raise TransportError("delivery already acked or nacked")
            delivery._state = ACKED
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
            if delivery._state == PENDING:
                settle(delivery, NACKED if requeue else ACKED)
