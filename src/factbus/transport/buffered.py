"""The buffered subscription every adapter builds on: received deliveries wait in
a buffer until the consuming task takes them with :meth:`~BufferedSubscription.next_batch`.

An adapter's receiving side (a broker callback on the event loop, or a consumer
thread through ``call_soon_threadsafe``) calls :meth:`~BufferedSubscription._deliver`;
a lost connection or revoked partitions :meth:`~BufferedSubscription._withdraw`
what may no longer be settled; a failure that the adapter cannot recover from
is recorded with :meth:`~BufferedSubscription._fail` and raised by the next
:meth:`~BufferedSubscription.next_batch` that finds the buffer empty.
Everything here runs on the event loop; nothing does I/O.

:class:`SettleOnce` is the deliveries' half: ``ack`` or ``nack``, exactly once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Generic, TypeVar, cast

from factbus.errors import FatalTransportError, TransportError
from factbus.transport.base import Delivery, DeliveryBatch, DeliveryList

__all__ = ["BufferedSubscription", "SettleOnce"]

D = TypeVar("D")


class SettleOnce:
    """Mixin for deliveries: the guard that ``ack``/``nack`` is called once."""

    __slots__ = ("_settled",)

    def __init__(self) -> None:
        self._settled = False

    def _settle_once(self) -> None:
        """Mark the delivery settled.

        :raises TransportError: it was acked or nacked before.
        """
        if self._settled:
            raise TransportError("delivery already acked or nacked")
        self._settled = True


class BufferedSubscription(Generic[D]):
    """A subscription's buffer, its wake-up event and its ``next_batch``.

    Only one task consumes (``next_batch`` or iteration); :meth:`_close_buffer`
    may run concurrently and makes a waiting ``next_batch`` return ``[]`` (and
    any later one raise :class:`~factbus.errors.FatalTransportError`).
    Subclasses implement ``aclose`` (calling :meth:`_close_buffer`) and may
    override :meth:`_take` (to wrap what they buffered) and :meth:`_take_batch`
    (to hand out a batch without a delivery object per record).
    """

    _iterate_batch = 1
    """How many deliveries iteration asks ``next_batch`` for at a time."""

    def __init__(self) -> None:
        self._buffer: collections.deque[D] = collections.deque()
        self._readable = asyncio.Event()
        self._closed = False
        self._error: TransportError | None = None

    # -- the receiving side ------------------------------------------------------

    def _deliver(self, items: Iterable[D]) -> None:
        """Buffer received deliveries (dropped once the subscription is closed)."""
        if self._closed:
            return
        self._buffer.extend(items)
        if self._buffer:
            self._readable.set()

    def _withdraw(self, keep: Callable[[D], bool]) -> None:
        """Drop the buffered deliveries for which ``keep`` is false (the broker
        delivers them again: their connection, channel or partition is gone)."""
        if any(not keep(d) for d in self._buffer):
            self._buffer = collections.deque(d for d in self._buffer if keep(d))

    def _fail(self, error: TransportError) -> None:
        """Record an unrecoverable failure: ``next_batch`` raises ``error`` once the
        buffer is empty (and again at each call, until :meth:`_recovered`)."""
        self._error = error
        self._readable.set()

    def _recovered(self) -> None:
        """Forget the failure recorded by :meth:`_fail` (the adapter reconnected)."""
        self._error = None

    def _close_buffer(self, *, clear: bool = True) -> None:
        """Closed: a waiting ``next_batch`` returns ``[]``, later ones raise
        :class:`FatalTransportError`; what was buffered is dropped (``clear``; the
        broker gives it back to the group)."""
        self._closed = True
        if clear:
            self._buffer = collections.deque()
        self._readable.set()

    def _take(self, count: int) -> list[D]:
        """Hand out ``count`` buffered deliveries (``count <= len(buffer)``)."""
        buffer = self._buffer
        if count >= len(buffer):
            batch = list(buffer)
            buffer.clear()
            return batch
        popleft = buffer.popleft
        return [popleft() for _ in range(count)]

    def _take_batch(self, count: int) -> DeliveryBatch:
        """Hand out ``count`` buffered deliveries as one batch (``count <= len(buffer)``);
        by default a :class:`~factbus.transport.DeliveryList` of :meth:`_take`'s."""
        return DeliveryList(cast("list[Delivery]", self._take(count)))

    def _closed_meanwhile(self) -> bool:
        """Whether the subscription closed while ``next_batch`` waited (a method, so
        that the type checker does not take ``_closed`` as fixed across the wait)."""
        return self._closed

    # -- the Subscription protocol -----------------------------------------------

    def __aiter__(self) -> AsyncIterator[D]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[D]:
        while not self._closed:
            for delivery in await self.next_batch(self._iterate_batch):
                yield delivery

    async def next_batch(self, max_messages: int, timeout: float | None = None) -> list[D]:
        """Wait until at least one delivery is buffered (or ``timeout`` seconds pass:
        then ``[]``), then return up to ``max_messages`` of those buffered, without
        waiting for more. A call in progress when the subscription closes returns
        ``[]``; a call made after it closed raises (it would never find anything,
        and returning ``[]`` at once would let a consuming loop spin).

        :raises FatalTransportError: the subscription is closed.
        :raises TransportError: the subscription failed (see :meth:`_fail`).
        """
        if not await self._wait(timeout):
            return []
        batch = self._take(max(min(max_messages, len(self._buffer)), 0))
        if self._buffer:
            self._readable.set()  # a sibling subscriber (memory) may take the rest
        return batch

    async def take_batch(self, max_messages: int, timeout: float | None = None) -> DeliveryBatch:
        """:meth:`next_batch` as one :class:`~factbus.transport.DeliveryBatch`
        (empty where it returns ``[]``): see :meth:`_take_batch`. Same errors."""
        if not await self._wait(timeout):
            return DeliveryList(())
        batch = self._take_batch(max(min(max_messages, len(self._buffer)), 0))
        if self._buffer:
            self._readable.set()
        return batch

    async def _wait(self, timeout: float | None) -> bool:
        """Wait until something is buffered (``True``), or ``timeout`` passes or the
        subscription closes meanwhile (``False``); raise as :meth:`next_batch` does."""
        if self._closed:
            raise FatalTransportError("the subscription is closed")
        while not self._buffer:
            if self._error is not None:
                raise self._error
            self._readable.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._readable.wait()
            except TimeoutError:
                return False
            if self._closed_meanwhile():
                return False
        return True
