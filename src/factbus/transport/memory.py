"""``memory://<namespace>``: an in-process broker, a real adapter (not a mock).

Buses in one process that use the same namespace talk to each other. Each
(topic, group) pair is a queue: every group gets every message published after
it first subscribed; subscribers in one group compete for its messages.
Unacknowledged messages go back to their queue when a subscription closes;
``nack(requeue=True)`` puts a message back at the head of its queue. Nothing
survives the process (``persistent=False``); dead letters are kept per
namespace for the process's lifetime.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final
from urllib.parse import urlsplit

from factbus.errors import ConfigError, TransportError
from factbus.headers import dead_letter_headers
from factbus.transport.base import Capabilities, DeadLetter, Message, TransportBase
from factbus.transport.buffered import BufferedSubscription, SettleOnce
from factbus.urls import query_options

_CAPABILITIES = Capabilities(
    persistent=False,
    ordered=True,
    consumer_groups=True,
    replays_history=False,
    redelivers_nacked=True,
    survives_broker_restart=False,
)


@dataclass
class _Queue:
    """One group's queue on one topic, shared by the group's subscribers."""

    items: collections.deque[MemoryDelivery] = field(default_factory=collections.deque)
    readable: asyncio.Event = field(default_factory=asyncio.Event)


_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


class _Namespace:
    """All topics of one ``memory://name``; shared by every transport on that name."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, _Queue]] = collections.defaultdict(dict)
        self.dead_letters: dict[str, list[DeadLetter]] = collections.defaultdict(list)

    def queue(self, topic: str, group: str) -> _Queue:
        groups = self.queues[topic]
        queue = groups.get(group)
        if queue is None:
            queue = groups[group] = _Queue()
        return queue

    def put(self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """One delivery per message and group (body and headers are shared: immutable)."""
        for queue in self.queues.get(topic, {}).values():
            queue.items.extend([MemoryDelivery(body, headers) for body, headers in messages])
            queue.readable.set()


class MemoryDelivery(SettleOnce):
    """A delivery from a memory queue; it belongs to the subscriber that took it.

    One object per delivery (body and headers are plain attributes); acking
    it is a plain call (:meth:`ack_inline`), which :func:`~factbus.transport.ack_all`
    uses instead of a coroutine per delivery."""

    __slots__ = ("_owner", "body", "headers", "redelivered")

    def __init__(self, body: bytes, headers: Mapping[str, str], redelivered: bool = False) -> None:
        self._settled = False
        self.body = body
        self.headers = headers
        self.redelivered = redelivered
        self._owner: MemorySubscription | None = None

    async def ack(self) -> None:
        self.ack_inline()

    async def nack(self, requeue: bool = True) -> None:
        self.ack_inline()
        if requeue and self._owner is not None:
            self._owner.requeue(self)

    @staticmethod
    def ack_inline_all(deliveries: Sequence[MemoryDelivery]) -> None:
        """:meth:`ack_inline` of each (see :func:`~factbus.transport.ack_all`)."""
        for delivery in deliveries:
            if delivery._settled:
                raise TransportError("delivery already acked or nacked")
            delivery._settled = True
            owner = delivery._owner
            if owner is not None:
                owner.unacked.pop(delivery, None)

    def ack_inline(self) -> None:
        """Settle, without I/O (see :func:`~factbus.transport.ack_all`).

        :raises TransportError: it was acked or nacked before.
        """
        self._settle_once()
        if self._owner is not None:
            self._owner.unacked.pop(self, None)


class MemorySubscription(BufferedSubscription[MemoryDelivery]):
    """One subscriber of a group's queue: its buffer is the queue itself, shared
    with the group's other subscribers."""

    def __init__(self, queue: _Queue) -> None:
        super().__init__()
        self._queue = queue
        self._buffer = queue.items
        self._readable = queue.readable
        self.unacked: dict[MemoryDelivery, None] = {}
        """Taken and not settled yet, in the order taken."""

    def requeue(self, delivery: MemoryDelivery) -> None:
        """Put a copy of a settled ``delivery`` back at the head of the queue."""
        self._queue.items.appendleft(MemoryDelivery(delivery.body, delivery.headers, True))
        self._queue.readable.set()

    def _take(self, count: int) -> list[MemoryDelivery]:
        batch = super()._take(count)
        for delivery in batch:
            delivery._owner = self
        self.unacked.update(dict.fromkeys(batch))
        return batch

    async def aclose(self) -> None:
        if self._closed:
            return
        self._close_buffer(clear=False)  # the queue stays, for the group's others
        pending = list(self.unacked)
        self.unacked.clear()
        for delivery in reversed(pending):
            delivery._settled = True
            self.requeue(delivery)
        self._queue.readable.set()  # wake a next_batch waiting on this queue


class MemoryTransport(TransportBase):
    """The in-process transport for ``memory://<namespace>`` (default namespace ``default``)."""

    _namespaces: ClassVar[dict[str, _Namespace]] = {}

    capabilities = _CAPABILITIES

    def __init__(self, url: str = "memory://") -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigError(f"MemoryTransport needs a memory:// URL, not {parts.scheme}://")
        query_options(url, (), what="memory transport")
        self.namespace = (parts.netloc + parts.path).strip("/") or "default"
        self._subscriptions: list[MemorySubscription] = []
        self._closed = False

    def _space(self) -> _Namespace:
        space = MemoryTransport._namespaces.get(self.namespace)
        if space is None:
            space = MemoryTransport._namespaces[self.namespace] = _Namespace()
        return space

    @classmethod
    def reset(cls, namespace: str | None = None) -> None:
        """Forget every queue (of one namespace, or all): for tests."""
        if namespace is None:
            cls._namespaces.clear()
        else:
            cls._namespaces.pop(namespace, None)

    async def connect(self) -> None:
        self._closed = False

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        self._space().put(
            topic, [(m.body, dict(m.headers) if m.headers else _NO_HEADERS) for m in messages]
        )

    async def subscribe(self, topic: str, group: str) -> MemorySubscription:
        if self._closed:
            raise TransportError("transport is closed")
        subscription = MemorySubscription(self._space().queue(topic, group))
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], reason: str
    ) -> None:
        letter = DeadLetter(body, dead_letter_headers(headers, topic, reason))
        self._space().dead_letters[topic].append(letter)

    async def read_dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        return list(self._space().dead_letters.get(topic, [])[:limit])

    async def purge_dead_letters(self, topic: str) -> int:
        letters = self._space().dead_letters.pop(topic, [])
        return len(letters)

    async def remove(self, topic: str, groups: Sequence[str]) -> list[str]:
        """Forget ``topic``'s queues of ``groups`` and its dead letters in this
        namespace (the namespace too once it holds nothing): see
        :class:`~factbus.transport.base.RemovesTopics`."""
        space = MemoryTransport._namespaces.get(self.namespace)
        if space is None:
            return []
        queues = space.queues.get(topic, {})
        for group in groups:
            queues.pop(group, None)
        if not queues:
            space.queues.pop(topic, None)
        space.dead_letters.pop(topic, None)
        if not space.queues and not space.dead_letters:
            MemoryTransport._namespaces.pop(self.namespace, None)
        return []

    async def lag(self, topic: str, group: str) -> dict[str, int]:
        """``{"queue": n}``: messages waiting in ``group``'s queue (see ReportsLag)."""
        queue = self._space().queues.get(topic, {}).get(group)
        return {} if queue is None else {"queue": len(queue.items)}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            await subscription.aclose()
        self._subscriptions.clear()

    def __repr__(self) -> str:
        return f"MemoryTransport('memory://{self.namespace}')"
