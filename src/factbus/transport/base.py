"""The transport contract: what every broker adapter implements (DESIGN.md §3).

A transport moves opaque message bodies; it knows nothing of facts. The pipeline
above it verifies, deduplicates and orders. Every adapter exposes one class that
implements :class:`Transport` and declares its :class:`Capabilities`; the
conformance suite in :mod:`factbus.testing` checks the contract against a real
broker.

Errors: a transport raises :class:`~factbus.errors.TransportError` (or its
subclass ``PublishError``) for a failure that may pass, **transient**: the
broker is unreachable for now, a publish was not confirmed in time; ``Bus``
retries a failed receive or step with back-off (the deliveries of a failed
step come again). It raises :class:`~factbus.errors.FatalTransportError` for
one that trying again cannot mend, **fatal**: the broker refuses what the
transport asks for (a queue that exists with other arguments: AMQP's
``PRECONDITION_FAILED``; access refused), or a subscription that has ended for
good (its consumer died and will not come back). ``Bus`` then stops with that
error (``factbus worker`` exits with status 3 and prints it). Any other
exception is treated as transient.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import NamedTuple, Protocol, Self, runtime_checkable

from factbus.errors import TransportError
from factbus.headers import dead_letter_reason
from factbus.lifecycle import AsyncLifecycle


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport guarantees; conformance tests are gated on these flags."""

    persistent: bool
    """Messages survive a broker restart (durable queues/logs, persistent messages)."""
    ordered: bool
    """One publisher's messages to one topic reach one subscriber in publish order
    (per key where the broker partitions)."""
    consumer_groups: bool
    """Subscribers sharing a group name share the work; other groups each get everything."""
    replays_history: bool
    """A group that subscribes late still receives messages published before it existed."""
    redelivers_nacked: bool = True
    """``nack(requeue=True)`` makes the message come again."""
    survives_broker_restart: bool = False
    """Publishers and subscribers reconnect by themselves after the broker restarts."""
    native_dead_letter: bool = False
    """Dead letters go to a broker-native destination (DLX, DLT) rather than a plain topic."""


class Message(NamedTuple):
    """One outgoing message: an envelope body plus metadata that is never hashed.

    Immutable. A named tuple rather than a frozen dataclass: a publish call
    makes one per envelope, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) cost 0.7 µs of it, 5x a tuple's.
    """

    body: bytes
    message_id: str
    """The head fact's hash: brokers that deduplicate by id help for free."""
    key: str | None = None
    """Partition / routing key hint (the head fact's type or a causal root)."""
    headers: Mapping[str, str] = MappingProxyType({})
    """Broker headers; several messages may share one mapping (``Bus.publish``
    gives all of a call's messages the same), so a transport must not change it."""


class Delivery(Protocol):
    """One received message. Exactly one of ack/nack must be called, once.

    ``ack`` and ``nack`` are cheap and may be called from the consuming task
    only. After ``aclose`` of its subscription, unacknowledged deliveries are
    redelivered to a subscriber of the same group.
    """

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def redelivered(self) -> bool:
        """True when the broker knows this message was delivered before."""
        ...

    async def ack(self) -> None:
        """Settle the message: it will not come again to this group."""

    async def nack(self, requeue: bool = True) -> None:
        """Give the message back: with ``requeue`` it comes again (possibly to
        another subscriber of the group); otherwise it leaves the group's queue
        (into the broker's native dead-letter destination where there is one,
        see ``Capabilities.native_dead_letter``). The pipeline never rejects
        without requeue: it dead-letters with a reason and acks."""


class Subscription(Protocol):
    """A live subscription of one group to one topic.

    Iterating yields deliveries one at a time; :meth:`next_batch` takes several
    at once, and :meth:`take_batch` takes them as one :class:`DeliveryBatch`
    (what ``Bus`` consumes with, a pipeline step per batch). Only one task may
    consume a subscription.
    """

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def next_batch(
        self, max_messages: int, timeout: float | None = None
    ) -> Sequence[Delivery]:
        """Wait until at least one delivery is available (or ``timeout`` seconds pass:
        then return ``[]``), then return up to ``max_messages`` of those already
        received, without waiting for more.

        :raises TransportError: receiving failed for now (transient: the caller
            may call again, after a pause).
        :raises FatalTransportError: the subscription failed and will not recover,
            or it is closed (:meth:`aclose`, or its transport's ``aclose``) and
            this call began after.
        """
        ...

    async def take_batch(self, max_messages: int, timeout: float | None = None) -> DeliveryBatch:
        """:meth:`next_batch` as one :class:`DeliveryBatch` (what ``Bus`` consumes
        with: no delivery object per record). Same waiting, same errors; an empty
        batch where :meth:`next_batch` returns ``[]``. Every adapter built on
        :class:`~factbus.transport.buffered.BufferedSubscription` has it (by
        default a :class:`DeliveryList` of :meth:`next_batch`'s deliveries); for a
        subscription without it, :func:`take_batch` makes that default."""
        ...

    async def aclose(self) -> None:
        """Stop receiving. Unacknowledged deliveries go back to the group.
        Idempotent; safe to call concurrently with :meth:`next_batch`, which then
        returns ``[]``; a later :meth:`next_batch` raises
        :class:`~factbus.errors.FatalTransportError`."""


class DeliveryBatch:
    """The records one receive took, as one object: what a pipeline step settles.

    ``bodies`` holds each record's body, in the order received. The step acks the
    batch once (:meth:`ack`), after its store transaction; a record that needs
    handling of its own (a rejected envelope: dead-lettered with its headers,
    then acked) is taken out with :meth:`delivery`, which makes its
    :class:`Delivery` then: a transport that can settle a batch without a
    delivery object per record (Kafka: one watermark per partition) makes them
    only for those. Exactly one of :meth:`ack` / :meth:`nack` is called, once,
    from the consuming task, as for a delivery; unacked records go back to the
    group when the subscription closes.

    This base class is the contract; :class:`DeliveryList` is the default every
    transport gets, and an adapter may specialise it (the Kafka adapter does).
    """

    __slots__ = ("_done", "bodies")

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        """Each record's body, in the order received (read, never changed)."""
        self._done = False

    def __len__(self) -> int:
        return len(self.bodies)

    def _settling(self) -> None:
        """Mark the batch settled (:meth:`ack` and :meth:`nack` call it first).

        :raises TransportError: it was acked or nacked before.
        """
        if self._done:
            raise TransportError("batch already acked or nacked")
        self._done = True

    def delivery(self, index: int) -> Delivery:
        """The record at ``index`` as a :class:`Delivery` of its own (its headers,
        its ``redelivered``), handed out: the caller settles it, and :meth:`ack`
        no longer covers it (:meth:`nack` does, while it is unsettled). Asking
        again for the same index returns the same delivery."""
        raise NotImplementedError

    def deliveries(self) -> list[Delivery]:
        """Every record as :meth:`delivery` hands it out (then the caller acks each:
        the per-record path, for observers that read every record's headers)."""
        return [self.delivery(i) for i in range(len(self))]

    @property
    def position(self) -> int | None:
        """The highest ``position`` of its records where they come from a
        :class:`LogReader` subscription (see :func:`delivery_position`), else ``None``."""
        return None

    def extend(self, more: DeliveryBatch) -> None:
        """Append ``more``, taken later from the same subscription and untouched
        (no :meth:`delivery`, :meth:`ack` or :meth:`nack` yet), as if one receive
        had taken both (``Bus``'s linger); an empty ``more`` of any kind changes
        nothing."""
        raise NotImplementedError

    async def ack(self) -> None:
        """Settle every record not handed out by :meth:`delivery` (those are their
        taker's): they will not come again to this group.

        :raises TransportError: the batch was acked or nacked before.
        """
        raise NotImplementedError

    async def nack(self, requeue: bool = True) -> None:
        """Give back every record not yet settled, handed out or not, as
        ``Delivery.nack`` would each (the pipeline step failed); a record that
        cannot be given back (already settled, its connection gone) is skipped.

        :raises TransportError: the batch was acked or nacked before.
        """
        raise NotImplementedError


class DeliveryList(DeliveryBatch):
    """The default :class:`DeliveryBatch`: a list of deliveries received one by one."""

    __slots__ = ("_handed", "items")

    def __init__(self, deliveries: Sequence[Delivery]) -> None:
        items = list(deliveries)
        super().__init__([d.body for d in items])
        self.items = items
        """The deliveries, in order."""
        self._handed: set[int] = set()

    def delivery(self, index: int) -> Delivery:
        self._handed.add(index)
        return self.items[index]

    def deliveries(self) -> list[Delivery]:
        self._handed.update(range(len(self.items)))
        return list(self.items)

    @property
    def position(self) -> int | None:
        at = [p for p in map(delivery_position, self.items) if p is not None]
        return max(at) if at else None

    def extend(self, more: DeliveryBatch) -> None:
        if not more:
            return
        if not isinstance(more, DeliveryList):
            raise TypeError(f"cannot extend a DeliveryList with {type(more).__name__}")
        self.items += more.items
        self.bodies += more.bodies

    async def ack(self) -> None:
        self._settling()
        handed = self._handed
        await ack_all(
            self.items if not handed else [d for i, d in enumerate(self.items) if i not in handed]
        )

    async def nack(self, requeue: bool = True) -> None:
        self._settling()
        for delivery in self.items:
            with contextlib.suppress(Exception):  # already settled, or connection gone
                await delivery.nack(requeue)


async def take_batch(
    subscription: Subscription, max_messages: int, timeout: float | None = None
) -> DeliveryBatch:
    """``subscription.take_batch(...)``, or for a subscription without one the
    default: a :class:`DeliveryList` of its :meth:`~Subscription.next_batch`."""
    take = getattr(type(subscription), "take_batch", None)
    if take is not None:
        batch: DeliveryBatch = await subscription.take_batch(max_messages, timeout)
        return batch
    return DeliveryList(await subscription.next_batch(max_messages, timeout))


@runtime_checkable
class Transport(Protocol):
    """A connection to one broker (or one in-memory namespace).

    Concurrency: ``publish`` may be called from many tasks at once. Ordering:
    messages from one ``publish`` call to one topic are delivered in list order
    where ``capabilities.ordered``. Failure: a ``publish`` that returns normally
    was confirmed by the broker (durably, where ``capabilities.persistent``).
    """

    capabilities: Capabilities

    async def connect(self) -> None:
        """Open connections. Idempotent.

        :raises TransportError: the broker cannot be reached.
        """

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Send ``messages`` to ``topic`` and return once the broker confirmed all.

        Confirmations are batched, not one round-trip per message. Where the
        broker keeps no log (AMQP), a topic that no group ever subscribed to has
        nowhere to put messages: the adapter documents whether that raises
        (AMQP's default) or drops (memory).

        :raises PublishError: a message was refused or not confirmed in time;
            some of the batch may have been delivered (at-least-once).
        """

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Subscribe ``group`` to ``topic`` and return once the subscription is set
        up: every message published after this returns reaches the group.

        Subscribers with the same group share messages; each group gets every
        message (where ``capabilities.consumer_groups``).

        :raises FatalTransportError: the broker refuses the subscription (the
            group's queue exists with other arguments, access refused).
        :raises TransportError: the broker cannot be reached for now.
        """
        ...

    async def dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], reason: str
    ) -> None:
        """Move a message that cannot be processed to the dead-letter destination of
        ``topic``, with ``reason`` in header ``x-factbus-dead-letter-reason``.
        Returns once the broker confirmed it (callers ack the original after)."""

    async def read_dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of ``topic`` without removing them
        (oldest first)."""
        ...

    async def purge_dead_letters(self, topic: str) -> int:
        """Remove every dead letter of ``topic``; return how many were removed."""
        ...

    async def aclose(self) -> None:
        """Flush pending publishes, close subscriptions and connections. Idempotent."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class LogReader(Protocol):
    """Optional: a transport that can read a topic's log from a position the node
    keeps in its own store (RabbitMQ streams). Detected at run time: the
    :class:`~factbus.Bus` uses it for fan-out when :meth:`position_key` is not
    ``None``; group mode always uses :meth:`Transport.subscribe`.

    Each delivery of such a subscription has an ``int`` attribute ``position``:
    the position to resume from once it is settled (its offset + 1). The
    pipeline records the highest one of each step in the step's own store
    transaction (``StoreBatch.positions``), so a restart resumes exactly.
    """

    def position_key(self, topic: str) -> str | None:
        """The store key of a node's read position in ``topic``'s log, or ``None``
        when this transport is not configured to read logs (then subscribe)."""
        ...

    async def subscribe_log(self, topic: str, node: str, position: int | None) -> Subscription:
        """Read ``topic``'s log from ``position`` (from its first record when
        ``None``). Returns once the reader is attached. ``nack(requeue=True)``
        reads the log again from the nacked delivery on.

        :raises TransportError: the log cannot be read (not declared, broker too old).
        """
        ...


@runtime_checkable
class ReportsLag(Protocol):
    """Optional: a transport that can say how far behind a group is (metrics use it)."""

    async def lag(self, topic: str, group: str) -> Mapping[str, int]:
        """Messages of ``topic`` that ``group`` has not consumed yet: per partition
        (``{"0": 12, "1": 0}``, Kafka: high watermark minus committed offset) or
        ``{"queue": depth}`` for queue brokers (messages ready in the group's
        queue, not counting those delivered and not yet acked). ``{}`` when the
        group's subscription does not exist yet. Safe to call while consuming.

        :raises TransportError: the broker could not be asked.
        """
        ...


@runtime_checkable
class RemovesTopics(Protocol):
    """Optional: a transport that can delete from its broker what it made for a topic
    (what ``factbus bench`` uses to leave nothing behind). Detected at run time;
    every shipped adapter has it."""

    async def remove(self, topic: str, groups: Sequence[str]) -> list[str]:
        """Delete what this transport made on the broker for ``topic`` and for each
        of ``groups`` subscribed to it: the topic itself (Kafka topic, AMQP/kombu
        exchange, RabbitMQ stream queue), its dead-letter destination, and each
        group's queue (AMQP, kombu: ``<topic>.<group>``) or consumer group (Kafka:
        the group's name, committed offsets included). Nothing else, however
        similar its name. What does not exist is no error, so calling it twice is
        harmless. Subscriptions still open on those names should be closed first
        (a Kafka group with members cannot be deleted).

        Returns a line per object that could not be removed (naming it and why;
        ``[]``: everything is gone); raises only for a broker that cannot be
        reached at all (:class:`~factbus.errors.TransportError`).
        """
        ...


def delivery_position(delivery: Delivery) -> int | None:
    """The ``position`` of a delivery from a :class:`LogReader` subscription, else ``None``."""
    position = getattr(delivery, "position", None)
    return position if isinstance(position, int) else None


async def ack_all(deliveries: Iterable[Delivery]) -> None:
    """Ack each of ``deliveries``, in order, as ``await delivery.ack()`` would.

    A delivery whose class has an ``ack_inline()`` method (a plain call that
    acks without I/O, as the memory transport's) is acked by that call, so a
    step of deliveries does not make one coroutine each; when every delivery
    is of one class with an ``ack_inline_all(deliveries)`` class method, that
    one call acks them all.
    """
    if isinstance(deliveries, list) and deliveries:
        ack_inline_all = getattr(type(deliveries[0]), "ack_inline_all", None)
        if ack_inline_all is not None and len(set(map(type, deliveries))) == 1:
            ack_inline_all(deliveries)
            return
    kind: type | None = None
    inline = False
    for delivery in deliveries:
        if type(delivery) is not kind:
            kind = type(delivery)
            inline = hasattr(kind, "ack_inline")
        if inline:
            delivery.ack_inline()  # type: ignore[attr-defined]
        else:
            await delivery.ack()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter destination."""

    body: bytes
    headers: Mapping[str, str]

    @property
    def reason(self) -> str:
        return dead_letter_reason(self.headers)


def dead_letter_topic(topic: str) -> str:
    """The name of ``topic``'s dead-letter destination, on every transport."""
    return f"{topic}.dead-letter"


class TransportBase(AsyncLifecycle):
    """Optional base class: ``async with`` on top of ``connect``/``aclose``."""

    async def connect(self) -> None:
        raise NotImplementedError

    async def _enter(self) -> None:
        await self.connect()
