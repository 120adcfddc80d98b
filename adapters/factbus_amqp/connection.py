"""The one place that owns the AMQP connection: connect, notice loss, reconnect, restore.

:class:`RecoveringConnection` registers everything the transport declares (topic
exchanges, node queues with their bindings, dead-letter exchanges and queues)
and every live consumer. When the connection drops (broker restart, network
failure noticed by heartbeats) one recovery task reconnects with capped
exponential backoff, re-declares the registered topology, opens fresh publish
and admin channels and re-attaches every consumer on a fresh channel of its
own; a consumer whose channel alone closed (a channel error, or the broker
cancelling it) is re-attached the same way. Until recovery succeeds,
:meth:`RecoveringConnection.live` waits; callers bound that wait with their own
deadline. Topology changes and recovery hold one lock, so a consumer or a
declaration is never lost between a connection failing and the restore that
follows it.

Work on a connection (a publish awaiting its confirms, a declaration, a
consumer's re-attach) runs inside :meth:`Live.bound`: when that connection is
lost, the work is interrupted at once with :class:`ConnectionLost` instead of
waiting on it. aiormq does not wake everything that waits on a dead connection
(a publish blocked on its full write queue when the writer stopped waits
forever, and every publish queued behind it on the channel lock), so nothing
here relies on it: the caller retries on the next connection.

Deliveries taken on a channel that closed are void: the broker requeues them
and delivers them again on the new channel (at-least-once); their ``ack`` and
``nack`` do nothing.

Names on the broker: exchange ``<topic>`` (topic type, durable); queue
``<topic>.<group>`` (durable, bound with ``#``, dead-lettering to
``<topic>.dead-letter``); exchange and queue ``<topic>.dead-letter`` (fanout,
durable). With ``history=stream``, also the stream queue ``<topic>.stream``
(``x-queue-type: stream``, bound with ``#``), declared with the exchange, so it
keeps every fact published from then on; log readers consume it from an offset
(``x-stream-offset``) and are re-attached after a loss at the offset they ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, ExchangeType

from factbus.errors import FatalTransportError, TransportError
from factbus.transport.base import dead_letter_topic

if TYPE_CHECKING:
    from factbus_amqp.config import AmqpConfig

log = structlog.get_logger("factbus.amqp")

ConsumerCallback = Callable[[aiormq.abc.DeliveredMessage], Coroutine[Any, Any, None]]

TOPOLOGY_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelLockedResource,
)
"""Channel errors that retrying cannot fix: the topology conflicts with what exists."""


class ConnectionLost(ConnectionError):
    """Work bound to a connection (:meth:`Live.bound`) was interrupted: the
    connection was lost meanwhile. One of ``CONNECTION_ERRORS``: retry on the next."""


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
)
"""Errors that a reconnection (or a fresh channel) can fix."""


def queue_name(topic: str, group: str) -> str:
    """The durable queue of ``group`` on ``topic``."""
    return f"{topic}.{group}"


def stream_name(topic: str) -> str:
    """The stream queue that keeps ``topic``'s history (``history=stream``)."""
    return f"{topic}.stream"


class Consumer(Protocol):
    """What :class:`RecoveringConnection` keeps attached: one subscription."""

    @property
    def topic(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def active(self) -> bool:
        """False once the subscription is closing: it must not be attached again."""
        ...

    @property
    def log_start(self) -> int | str | None:
        """For a stream reader, the ``x-stream-offset`` to attach at now (asked again
        at each re-attach); ``None`` for a consumer of the group's queue."""
        ...

    def attached(self, channel: aiormq.abc.AbstractChannel) -> ConsumerCallback:
        """A fresh channel is about to consume for this subscription: return the
        callback for its deliveries (earlier channels' deliveries are void)."""
        ...

    def detached(self) -> None:
        """The subscription's channel is gone; its unsettled deliveries are void."""

    def failed(self, error: BaseException) -> None:
        """The subscription cannot be restored (its queue conflicts with the broker's)."""


@dataclass(eq=False)
class Live:
    """One established connection and the channels the transport shares on it."""

    connection: AbstractConnection
    publish: AbstractChannel | None = None
    """Confirm-mode channel; unroutable mandatory messages fail their confirm."""
    admin: AbstractChannel | None = None
    """Declarations and purges: a channel error there spares the publish channel."""
    declared: set[tuple[str, str]] = field(default_factory=set)
    alive: bool = True
    """False once the connection is lost or closed (:meth:`lose`); never true again."""
    channel_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lost: str = "closed"
    """Why the connection was lost (scrubbed), for errors."""
    working: set[asyncio.Task[Any]] = field(default_factory=set)
    """Tasks inside :meth:`bound` now."""
    interrupted: set[asyncio.Task[Any]] = field(default_factory=set)
    """Tasks of ``working`` cancelled by :meth:`lose`, until they leave :meth:`bound`."""

    def bound(self) -> Bound:
        """``with live.bound():`` the current task's work on this connection, which
        raises :class:`ConnectionLost` when the connection is lost (at once if
        it already is) rather than wait on it (see :class:`Bound`)."""
        return Bound(self)

    def lose(self, reason: str = "closed") -> None:
        """Mark the connection dead and interrupt every task inside :meth:`bound`
        (except the calling one, which finds out by itself). Idempotent."""
        if not self.alive:
            return
        self.alive = False
        self.lost = reason
        current = asyncio.current_task()
        for task in self.working:
            if task is not current and not task.done():
                self.interrupted.add(task)
                task.cancel()


class Bound:
    """The context manager of :meth:`Live.bound`.

    :meth:`Live.lose` interrupts the task with a cancellation, which this turns
    into :class:`ConnectionLost` when it leaves the block (aiormq's futures and
    locks clean up on cancellation: a publish not yet written gives back its
    delivery tag). A cancellation from elsewhere (``asyncio.timeout``,
    ``Task.cancel``) arriving too stays a cancellation: only the one
    :meth:`Live.lose` requested is taken back (``Task.uncancel``). As
    ``asyncio.timeout`` does, the task's cancellation count on entry is the
    reference: work in a task already being cancelled (clean-up in a ``finally``
    after a ``CancelledError``, whose count stays 1) still gets
    :class:`ConnectionLost`. Cheap: a set insertion and removal, no task, no future.
    """

    __slots__ = ("_cancelling", "_live", "_task")

    def __init__(self, live: Live) -> None:
        self._live = live
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0

    def __enter__(self) -> None:
        live = self._live
        if not live.alive:
            raise ConnectionLost(f"the amqp connection was lost ({live.lost})")
        task = asyncio.current_task()
        assert task is not None, "Live.bound() needs a running task"
        self._task = task
        self._cancelling = task.cancelling()
        live.working.add(task)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> None:
        live, task = self._live, self._task
        assert task is not None
        live.working.discard(task)
        if task not in live.interrupted:
            return
        live.interrupted.discard(task)
        # lose() ran while the task was suspended inside the block, so its
        # cancellation was delivered there; take back its count. A count still
        # above the one on entry: another cancellation came too, it goes on.
        if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise ConnectionLost(f"the amqp connection was lost ({live.lost})") from None


class RecoveringConnection:
    """An AMQP connection that reconnects and restores topology by itself.

    Concurrency: every method may be called from many tasks at once.
    Failure: :meth:`open` raises when the broker cannot be reached; after that,
    losing the connection never raises here: callers see ``CONNECTION_ERRORS``
    from the operation that was cut and wait in :meth:`live` for the recovery.
    """

    def __init__(self, config: AmqpConfig) -> None:
        self.config = config
        self._live: Live | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._lock = asyncio.Lock()
        self._exchanges: set[str] = set()
        self._dead_letters: set[str] = set()
        self._consumers: dict[Consumer, AbstractChannel | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0
        """How many times the connection was re-established (for tests and metrics)."""

    # -- life cycle -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._live is not None and not self._closing

    @property
    def ready(self) -> bool:
        """True while a live connection is there (false while recovering, or closed)."""
        live = self._live
        return live is not None and live.alive and self._ready.is_set() and not self._closing

    async def open(self) -> None:
        """Connect once. Idempotent.

        :raises TransportError: the broker cannot be reached or refused the login.
        """
        if self._live is not None:
            return
        try:
            async with self._lock:
                if self._live is None:
                    live = await self._connect()
                    self._live = live
                    self._ready.set()
        except Exception as error:
            raise TransportError(
                f"cannot connect to {self.config.display_url()}: {self.scrub(error)}"
            ) from None

    async def aclose(self) -> None:
        """Stop recovering and close the connection. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._ready.set()  # wake waiters: they see the connection closing
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        live, self._live = self._live, None
        if live is not None:
            live.lose("the transport was closed")
            await _close_quietly(live.connection)

    async def live(self) -> Live:
        """The current connection, waiting while it is being re-established.

        :raises TransportError: the connection was closed with :meth:`aclose`.
        """
        while True:
            if self._closing:
                raise TransportError("the amqp transport is closed")
            live = self._live
            if live is not None and live.alive and self._ready.is_set():
                return live
            # Invariant: _ready is set only while _live is alive (or when closing).
            await self._ready.wait()

    # -- channels -------------------------------------------------------------------

    async def publish_channel(self, live: Live) -> aiormq.Channel:
        """The confirm-mode channel of ``live``, reopened if a channel error closed it."""
        channel = live.publish
        if channel is None or channel.is_closed:
            async with live.channel_lock:
                channel = live.publish
                if channel is None or channel.is_closed:
                    channel = live.publish = await _open_channel(live, confirms=True)
        return cast("aiormq.Channel", await channel.get_underlay_channel())

    async def admin_channel(self, live: Live) -> AbstractChannel:
        """The declaration channel of ``live``, reopened if a channel error closed it."""
        channel = live.admin
        if channel is None or channel.is_closed:
            async with live.channel_lock:
                channel = live.admin
                if channel is None or channel.is_closed:
                    channel = live.admin = await _open_channel(live, confirms=False)
        return channel

    # -- topology -------------------------------------------------------------------

    async def declare(self, live: Live, what: tuple[str, str]) -> None:
        """Declare ``("exchange", topic)`` (:meth:`declare_topic`) or
        ``("dead-letter", topic)`` (:meth:`declare_dead_letter`): the keys of
        ``Live.declared``, so a caller skips the call when the key is there."""
        kind, topic = what
        if kind == "dead-letter":
            await self.declare_dead_letter(live, topic)
        else:
            await self.declare_topic(live, topic)

    async def declare_topic(self, live: Live, topic: str) -> None:
        """Declare ``topic``'s exchange once per connection, and restore it after."""
        if ("exchange", topic) in live.declared:
            return
        async with self._lock:
            self._current(live)
            await self._declare_exchange(live, topic)
            self._exchanges.add(topic)

    async def declare_dead_letter(self, live: Live, topic: str) -> None:
        """Declare ``topic``'s dead-letter exchange and queue (and restore them after)."""
        if ("dead-letter", topic) in live.declared:
            return
        async with self._lock:
            self._current(live)
            await self._declare_dead_letter(live, topic)
            self._dead_letters.add(topic)

    def forget(self, live: Live, topic: str) -> None:
        """``topic``'s exchange may be gone (a channel error): declare it again next time."""
        live.declared.discard(("exchange", topic))

    async def add_consumer(self, live: Live, consumer: Consumer) -> None:
        """Declare the consumer's queue and binding, start consuming, and keep it so.

        Returns once the queue is bound: every message published after that
        reaches it, whatever happens to the connection later.

        :raises TransportError: the queue conflicts with one on the broker.
        :raises CONNECTION_ERRORS: ``live`` failed meanwhile (call again with the next).
        """
        async with self._lock:
            self._current(live)
            try:
                await self._attach(live, consumer)
            except TOPOLOGY_ERRORS as error:
                raise FatalTransportError(
                    f"cannot subscribe to {consumer.topic!r} as {consumer.group!r}: {error}"
                ) from None

    async def restart_consumer(self, consumer: Consumer) -> None:
        """Close ``consumer``'s channel: it is re-attached (at its ``log_start``) after
        ``reconnect_delay``, as after a channel error."""
        channel = self._consumers.get(consumer)
        if channel is not None:
            await _close_quietly(channel)

    async def remove_consumer(self, consumer: Consumer) -> None:
        """Stop consuming (``consumer.active`` must already be false); unsettled
        deliveries go back to the queue. Idempotent; does not wait for a recovery."""
        channel = self._consumers.pop(consumer, None)
        consumer.detached()
        if channel is not None:
            await _close_quietly(channel)

    # -- internals ------------------------------------------------------------------

    def _current(self, live: Live) -> Live:
        if self._closing:
            raise TransportError("the amqp transport is closed")
        if live is not self._live or not live.alive:
            raise aiormq.exceptions.ChannelInvalidStateError("the amqp connection was lost")
        return live

    async def _connect(self) -> Live:
        config = self.config
        connection = await aio_pika.connect(
            config.amqp_url(),
            ssl_context=config.ssl_context(),
            timeout=config.connect_timeout,
        )
        live = Live(connection)
        connection.close_callbacks.add(partial(self._connection_closed, live))
        try:
            live.publish = await _open_channel(live, confirms=True)
            live.admin = await _open_channel(live, confirms=False)
        except BaseException:
            live.lose()
            await _close_quietly(connection)
            raise
        return live

    def _connection_closed(self, live: Live, _sender: Any, error: BaseException | None) -> None:
        if live.alive:
            self._lost(live, error)

    def _lost(self, live: Live, error: BaseException | None) -> None:
        """``live`` is dead: interrupt the work bound to it, void its consumers'
        deliveries and start the recovery."""
        live.lose(self.scrub(error))
        if self._closing or live is not self._live:
            return
        log.warning(
            "amqp connection lost; reconnecting",
            url=self.config.display_url(),
            error=self.scrub(error),
        )
        self._ready.clear()
        for consumer in self._consumers:
            self._consumers[consumer] = None
            consumer.detached()
        self._spawn(self._recover(live))

    async def _recover(self, lost: Live) -> None:
        self._spawn(_close_quietly(lost.connection))  # in the background: it may hang
        config = self.config
        delay = config.reconnect_delay
        attempt = 0
        while not self._closing:
            attempt += 1
            try:
                async with self._lock:
                    live = await asyncio.wait_for(self._connect(), config.connect_timeout)
                    try:
                        async with asyncio.timeout(config.connect_timeout):
                            await self._restore(live)
                        if not live.alive:
                            raise aiormq.exceptions.ChannelInvalidStateError("lost again")
                    except BaseException:
                        live.lose()
                        await _close_quietly(live.connection)
                        raise
                    self._live = live
                    self.reconnects += 1
                    self._ready.set()
                log.info("amqp connection restored", url=config.display_url(), attempts=attempt)
                return
            except Exception as error:
                log.warning(
                    "amqp reconnection failed; retrying",
                    url=config.display_url(),
                    attempt=attempt,
                    delay=delay,
                    error=self.scrub(error),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.reconnect_max_delay)

    async def _restore(self, live: Live) -> None:
        """Declare everything registered on ``live`` and re-attach every consumer."""
        for topic in sorted(self._exchanges):
            await self._restore_one(live, topic, self._declare_exchange(live, topic))
        for topic in sorted(self._dead_letters):
            await self._restore_one(live, topic, self._declare_dead_letter(live, topic))
        for consumer in list(self._consumers):
            if not consumer.active or consumer not in self._consumers:
                continue
            try:
                await self._attach(live, consumer)
            except TOPOLOGY_ERRORS as error:
                self._give_up(consumer, error)

    async def _restore_one(self, live: Live, topic: str, declaration: Awaitable[None]) -> None:
        try:
            await declaration
        except TOPOLOGY_ERRORS as error:
            log.error("amqp topology cannot be restored", topic=topic, error=str(error))

    def _give_up(self, consumer: Consumer, error: BaseException) -> None:
        log.error(
            "amqp subscription cannot be restored",
            topic=consumer.topic,
            group=consumer.group,
            error=str(error),
        )
        self._consumers.pop(consumer, None)
        consumer.failed(error)

    async def _declare_exchange(self, live: Live, topic: str) -> None:
        if ("exchange", topic) in live.declared:
            return
        admin = await self.admin_channel(live)
        exchange = await admin.declare_exchange(topic, ExchangeType.TOPIC, durable=True)
        if self.config.history == "stream":
            stream = await admin.declare_queue(
                stream_name(topic), durable=True, arguments={"x-queue-type": "stream"}
            )
            await stream.bind(exchange, routing_key="#")
        live.declared.add(("exchange", topic))

    async def _declare_dead_letter(self, live: Live, topic: str) -> None:
        if ("dead-letter", topic) in live.declared:
            return
        name = dead_letter_topic(topic)
        admin = await self.admin_channel(live)
        exchange = await admin.declare_exchange(name, ExchangeType.FANOUT, durable=True)
        queue = await admin.declare_queue(name, durable=True)
        await queue.bind(exchange, routing_key="")
        live.declared.add(("dead-letter", topic))

    async def _declare_queue(self, live: Live, topic: str, group: str) -> None:
        if ("queue", queue_name(topic, group)) in live.declared:
            return
        await self._declare_exchange(live, topic)
        await self._declare_dead_letter(live, topic)
        admin = await self.admin_channel(live)
        queue = await admin.declare_queue(
            queue_name(topic, group),
            durable=True,
            arguments={"x-dead-letter-exchange": dead_letter_topic(topic)},
        )
        await queue.bind(topic, routing_key="#")
        live.declared.add(("queue", queue_name(topic, group)))

    async def _attach(self, live: Live, consumer: Consumer) -> None:
        """Declare the consumer's queue and consume it on a fresh channel (lock held)."""
        start = consumer.log_start
        arguments: dict[str, Any] | None
        if start is None:
            await self._declare_queue(live, consumer.topic, consumer.group)
            queue, arguments = queue_name(consumer.topic, consumer.group), None
        else:
            await self._declare_exchange(live, consumer.topic)  # and its stream
            queue, arguments = stream_name(consumer.topic), {"x-stream-offset": start}
        channel = await _open_channel(live, confirms=False)
        try:
            # Stream queues need a prefetch: it is their flow control.
            await channel.set_qos(prefetch_count=self.config.prefetch)
            raw = await channel.get_underlay_channel()
            callback = consumer.attached(raw)
            await raw.basic_consume(queue, callback, arguments=arguments)
        except BaseException:
            consumer.detached()
            await _close_quietly(channel)
            raise
        if not consumer.active:  # closed while we attached it
            await _close_quietly(channel)
            return
        self._consumers[consumer] = channel
        channel.close_callbacks.add(partial(self._consumer_channel_closed, consumer, live))
        raw.on_consumer_cancel_callbacks.add(partial(self._consumer_cancelled, channel))

    def _consumer_cancelled(self, channel: AbstractChannel, _frame: Any) -> None:
        # The broker cancelled the consumer (its queue was deleted): closing the
        # channel re-attaches it, which declares the queue again.
        self._spawn(_close_quietly(channel))

    def _consumer_channel_closed(
        self, consumer: Consumer, live: Live, sender: Any, _error: BaseException | None
    ) -> None:
        if self._consumers.get(consumer) is not sender:
            return  # removed, or already replaced
        self._consumers[consumer] = None
        consumer.detached()
        if not self._closing and live.alive:
            self._spawn(self._reattach(consumer))

    async def _reattach(self, consumer: Consumer) -> None:
        """Re-attach one consumer whose channel closed while the connection stayed up."""
        await asyncio.sleep(self.config.reconnect_delay)
        async with self._lock:
            live = self._live
            if (
                self._closing
                or live is None
                or not live.alive
                or consumer not in self._consumers
                or self._consumers[consumer] is not None
            ):
                return  # closed, removed, or the connection recovery re-attaches it
            # The channel may have closed because the queue went away: declare it again.
            live.declared.discard(("queue", queue_name(consumer.topic, consumer.group)))
            try:
                with live.bound():
                    await self._attach(live, consumer)
            except TOPOLOGY_ERRORS as error:
                self._give_up(consumer, error)
            except CONNECTION_ERRORS as error:
                log.warning("amqp consumer re-attach failed", error=self.scrub(error))
                if live.alive:
                    self._lost(live, error)  # start over on a new connection

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def scrub(self, error: BaseException | None) -> str:
        """``error`` as text, without the password (aiormq messages may quote the URL)."""
        if error is None:
            return "closed"
        if isinstance(error, asyncio.CancelledError):
            return "no frame received within the heartbeat grace period"
        text = f"{type(error).__name__}: {error}"
        password = self.config.password
        return text.replace(password, "***") if password else text


async def _open_channel(live: Live, *, confirms: bool) -> AbstractChannel:
    channel = live.connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    await channel.initialize()
    return channel


CLOSE_TIMEOUT = 5.0
"""Seconds a close may take: a silent (black-holed) connection never answers."""


async def _close_quietly(closable: AbstractChannel | AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await closable.close()
