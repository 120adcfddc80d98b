""":class:`KombuTransport`: factbus over any kombu transport (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from kombu.exceptions import ChannelError

from factbus.errors import ConfigError, PublishError, TransportError
from factbus.headers import dead_letter_headers
from factbus.transport.base import (
    Capabilities,
    DeadLetter,
    Message,
    Transport,
    TransportBase,
    dead_letter_topic,
)
from factbus.urls import redact
from factbus_kombu import removal
from factbus_kombu.config import GENERIC_CAPABILITIES, KombuConfig
from factbus_kombu.consumer import KombuSubscription
from factbus_kombu.link import (
    Link,
    body_of,
    dead_letter_queue,
    dead_letter_route,
    exchange,
    group_queue,
    headers_of,
)

T = TypeVar("T")
log = structlog.get_logger("factbus.kombu")

DEAD_LETTER_GROUP = "dead-letter"
"""``<topic>.dead-letter`` is the dead-letter queue, so no group may use that name."""


RESTORE_BATCH: Final = 5000
"""At most this many unacked messages are restored per pass (the oldest first)."""


def restore_interval(config: KombuConfig) -> float:
    """Seconds between two restore passes on redis: a quarter of the visibility
    timeout, between 1 and 30 s."""
    timeout = float(config.transport_options.get("visibility_timeout", 3600))
    return min(max(timeout / 4, 1.0), 30.0)


class KombuTransport(TransportBase):
    """The transport for ``kombu+<transport>://`` URLs.

    Concurrency: every coroutine may be called from many tasks at once. Broker
    calls for publishing and dead letters run one at a time on one worker
    thread that owns the publishing connection; each subscription has a thread
    and a connection of its own. Nothing blocks the event loop.

    ``capabilities`` depends on the URL (AMQP, redis, other), so it is set per
    instance; the class attribute is what any kombu transport guarantees.
    """

    capabilities: Capabilities = GENERIC_CAPABILITIES

    def __init__(self, url: str) -> None:
        self.config = KombuConfig.from_url(url)
        self.capabilities = self.config.capabilities
        self._executor: ThreadPoolExecutor | None = None
        self._link = Link(self.config, role="publisher")
        self._subscriptions: list[KombuSubscription] = []
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._restorer: asyncio.Task[None] | None = None

    def _shutting_down(self) -> bool:
        return self._closing is not None

    def __repr__(self) -> str:
        return f"KombuTransport({redact(self.config.url)!r})"

    # -- the publishing thread ------------------------------------------------------

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise TransportError("transport is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="factbus-kombu-pub"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def connect(self) -> None:
        """Open the publishing connection (retrying up to ``factbus_retry_timeout``).
        Idempotent.

        :raises TransportError: the broker cannot be reached.
        """
        await self._call(self._link.open, self.config.retry_timeout)
        heartbeat = float(self.config.connection_options.get("heartbeat") or 0)
        if heartbeat > 0 and not self.config.is_virtual and self._keepalive is None:
            self._keepalive = asyncio.create_task(
                self._keep_alive(heartbeat / 2), name="factbus-kombu-heartbeat"
            )

    async def _keep_alive(self, every: float) -> None:
        """With AMQP heartbeats on, answer them on the publishing connection while
        no publish uses it (otherwise the broker drops an idle publisher)."""
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(TransportError):
                await self._call(self._link.keep_alive)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Send ``messages`` to ``topic``'s exchange in one worker-thread call: all
        published, then their confirms awaited together (AMQP), or pipelined
        (redis). Reconnects and resends the whole batch on connection errors until
        ``factbus_retry_timeout``.

        A topic no group has subscribed to (no queue bound to its exchange) drops
        the messages without an error, on every kombu transport.

        :raises PublishError: refused, not confirmed in time, or still no
            connection at the deadline; some of the batch may have been delivered.
        """
        if not messages:
            return
        link = self._link

        def attempt(_channel: Any) -> None:
            link.publish(topic, messages)

        await self._call(
            link.run, attempt, self.config.retry_timeout, f"publish to {topic}", PublishError
        )

    async def subscribe(self, topic: str, group: str) -> KombuSubscription:
        """Declare ``<topic>.<group>`` (durable, bound to the topic's exchange) and
        consume it on a thread of its own; return once it is consumed.

        :raises ConfigError: ``group`` is the name reserved for dead letters.
        :raises FatalTransportError: the broker refused the queue.
        :raises TransportError: the broker cannot be reached.
        """
        if self._shutting_down():
            raise TransportError("transport is closed")
        if group == DEAD_LETTER_GROUP:
            raise ConfigError(f"group name {group!r} is reserved for the dead-letter queue")
        subscription = KombuSubscription(self.config, topic, group)
        await subscription.start()
        if self._shutting_down():  # the transport was closed while this one started
            await subscription.aclose()
            raise TransportError("transport is closed")
        self._subscriptions.append(subscription)
        if self.config.driver_type == "redis" and self._restorer is None:
            self._restorer = asyncio.create_task(
                self._restore_unacked(), name="factbus-kombu-restore"
            )
        return subscription

    async def _restore_unacked(self) -> None:
        """redis: give back what dead consumers held (kill -9, lost host), at once
        and then every :func:`restore_interval` seconds.

        kombu keeps each delivered, unacked message in its unacked hash and puts
        back those older than ``visibility_timeout``, but only when a consumer's
        poll finds its queue empty: a consumer that is never idle never restores.
        This drives
        kombu's ``QoS.restore_visible`` itself, on the publishing connection,
        scanning on every call (the throttle is for kombu's per-poll calls).
        Restored messages go back to the queue they were taken from (the redis
        channel records them so, see ``redis_channel``: this connection need not
        have declared their topics). A pass shares the publishing thread, so
        publishes wait while it restores (up to :data:`RESTORE_BATCH` messages).
        """
        every = restore_interval(self.config)
        link = self._link

        def restore(channel: Any) -> None:
            channel.qos.restore_visible(num=RESTORE_BATCH, interval=1)

        while True:
            try:
                await self._call(link.run, restore, self.config.retry_timeout, "restore unacked")
            except TransportError as exc:
                log.warning("kombu could not restore unacked messages", error=str(exc))
            await asyncio.sleep(every)

    # -- dead letters ---------------------------------------------------------------

    async def dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], reason: str
    ) -> None:
        """Publish to the durable queue ``<topic>.dead-letter`` (through its fanout
        exchange on AMQP, the default exchange elsewhere) with the reason in
        ``x-factbus-dead-letter-reason`` and the topic in
        ``x-factbus-dead-letter-topic``; return once confirmed.

        :raises PublishError: not confirmed (see :meth:`publish`).
        """
        queue = dead_letter_topic(topic)
        message = Message(body, "", None, dead_letter_headers(headers, topic, reason))
        link = self._link
        native = not self.config.is_virtual
        exchange_name, key = dead_letter_route(topic, native)

        def attempt(channel: Any) -> None:
            link.declare("dead-letter:" + topic, dead_letter_queue(topic, native))
            link.send(channel, exchange_name, [(message, key)])

        await self._call(
            link.run, attempt, self.config.retry_timeout, f"dead-letter to {queue}", PublishError
        )

    async def read_dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic``, oldest first, left in place.

        AMQP: takes up to ``limit`` without acking and rejects them back (RabbitMQ
        restores their positions). Virtual transports: takes *all* of them and
        puts each back at the tail in order, so the queue ends as it was (cost
        linear in the queue's length; a letter dead-lettered meanwhile may end up
        before the others).

        :raises TransportError: the broker cannot be reached.
        """
        queue = dead_letter_topic(topic)
        link = self._link
        virtual = self.config.is_virtual

        def attempt(connection_channel: Any) -> list[DeadLetter]:
            channel = link.connection.channel()
            try:
                entity = dead_letter_queue(topic, not virtual)(channel)
                entity.declare()
                taken: list[Any] = []
                while virtual or len(taken) < limit:
                    message = entity.get(no_ack=False)
                    if message is None:
                        break
                    taken.append(message)
                letters = [DeadLetter(body_of(m), headers_of(m)[0]) for m in taken[:limit]]
                for message in taken:
                    message.requeue()
                return letters
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

        return await self._call(link.run, attempt, self.config.retry_timeout, f"read {queue}")

    async def purge_dead_letters(self, topic: str) -> int:
        """Remove every dead letter of ``topic``; return how many were removed.

        :raises TransportError: the broker cannot be reached.
        """
        queue = dead_letter_topic(topic)
        link = self._link

        native = not self.config.is_virtual

        def attempt(channel: Any) -> int:
            link.declare("dead-letter:" + topic, dead_letter_queue(topic, native))
            return int(channel.queue_purge(queue) or 0)

        return await self._call(link.run, attempt, self.config.retry_timeout, f"purge {queue}")

    # -- removal ----------------------------------------------------------------------

    async def remove(self, topic: str, groups: Sequence[str]) -> list[str]:
        """Delete the queues ``<topic>.<group>`` of ``groups`` and ``<topic>.dead-letter``
        (their messages and bindings with them), then the topic's exchange and, on
        AMQP, its dead-letter exchange (:mod:`factbus_kombu.removal`, on a connection
        of its own; see :class:`~factbus.transport.base.RemovesTopics`).

        :raises TransportError: the broker cannot be reached.
        """
        native = not self.config.is_virtual
        dead = dead_letter_queue(topic, native)
        queues = [*(group_queue(topic, group, native) for group in groups), dead]
        exchanges = [exchange(topic), *([dead.exchange] if native else [])]
        try:
            return await asyncio.to_thread(removal.delete, self.config, queues, exchanges)
        except Exception as error:
            raise TransportError(f"cannot remove {topic!r}: {error}") from error

    # -- lag (metrics) ----------------------------------------------------------------

    async def lag(self, topic: str, group: str) -> dict[str, int]:
        """``{"queue": n}``: messages waiting in ``<topic>.<group>`` (a passive
        declare on a channel of its own). A missing queue is ``{}`` on AMQP; on
        virtual transports (redis) an empty queue has no key, so it is 0.

        :raises TransportError: the broker cannot be reached.
        """
        name = f"{topic}.{group}"
        link = self._link
        virtual = self.config.is_virtual

        def attempt(_channel: Any) -> dict[str, int]:
            channel = link.connection.channel()
            try:
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                except ChannelError:
                    return {"queue": 0} if virtual else {}
                return {"queue": int(declared.message_count or 0)}
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

        return await self._call(link.run, attempt, self.config.retry_timeout, f"lag of {name}")

    # -- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every subscription (their unacked messages go back), let publishes
        already queued finish, then close the publishing connection. Idempotent and
        safe to call concurrently."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for task in (self._keepalive, self._restorer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        subscriptions, self._subscriptions = self._subscriptions, []
        await asyncio.gather(*(s.aclose() for s in subscriptions), return_exceptions=True)
        executor, self._executor = self._executor, None
        self._closed = True
        if executor is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(executor, self._link.close)
            finally:
                executor.shutdown(wait=False)


if TYPE_CHECKING:

    def _implements_the_protocol(transport: KombuTransport) -> Transport:
        return transport  # mypy checks KombuTransport against the Transport protocol
