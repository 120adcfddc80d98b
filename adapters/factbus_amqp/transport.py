"""``amqp://`` / ``amqps://``: the RabbitMQ (AMQP 0-9-1) transport, on aio-pika.

Topology (see :mod:`factbus_amqp.connection`): each topic is a durable topic
exchange of the same name; each group is a durable queue ``<topic>.<group>``
bound to it with ``#``, so every group gets every message and the subscribers
of one group share its queue. Messages are persistent (delivery mode 2), carry
``Message.message_id`` as the AMQP message id, ``Message.key`` as the routing
key and ``Message.headers`` as headers.

Publishing: one confirm-mode channel per transport. A ``publish`` call sends
all its messages, then awaits all their confirms together. Messages the broker
could not route (no group has subscribed to the topic yet) raise
``PublishError`` unless ``unroutable=drop``. Messages cut off by a lost
connection are sent again once it is back, within ``publish_timeout``.

Consuming: one channel per subscription with ``basic.qos(prefetch)``; the
broker pushes deliveries into a buffer that :meth:`AmqpSubscription.next_batch`
drains without waiting for more. Acks are coalesced: the acks (and nacks) made
while the consuming task runs are sent together when it next yields, a run of
consecutive acks as one ``basic.ack(multiple=True)``.

Dead letters: exchange (fanout) and queue ``<topic>.dead-letter``; node queues
dead-letter there natively (``x-dead-letter-exchange``), so a delivery nacked
without requeue lands there too, with reason ``broker: rejected``.

History (``history=stream``): each topic's exchange also feeds the stream queue
``<topic>.stream``; :meth:`AmqpTransport.subscribe_log` reads it from a position
the caller keeps (the bus: in its store, see :class:`factbus.transport.LogReader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import aiormq
import structlog
from aiormq import spec

from factbus.errors import ConfigError, FatalTransportError, PublishError, TransportError
from factbus.headers import HEADER_DEAD_LETTER_REASON, dead_letter_headers
from factbus.transport.base import (
    Capabilities,
    DeadLetter,
    Message,
    TransportBase,
    dead_letter_topic,
)
from factbus.transport.buffered import BufferedSubscription, SettleOnce
from factbus.urls import redact
from factbus_amqp import removal
from factbus_amqp.config import AmqpConfig
from factbus_amqp.connection import (
    CONNECTION_ERRORS,
    TOPOLOGY_ERRORS,
    ConnectionLost,
    ConsumerCallback,
    Live,
    RecoveringConnection,
    queue_name,
    stream_name,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from pamqp.common import FieldTable

log = structlog.get_logger("factbus.amqp")

T = TypeVar("T")

PERSISTENT = 2

_CAPABILITIES = Capabilities(
    persistent=True,
    ordered=True,
    consumer_groups=True,
    replays_history=False,
    redelivers_nacked=True,
    survives_broker_restart=True,
    native_dead_letter=True,
)


class AmqpDelivery(SettleOnce):
    """A message pushed by the broker to one subscription's channel."""

    __slots__ = (
        "_channel",
        "_headers",
        "_message",
        "_redelivered",
        "_tag",
        "position",
    )

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        channel: _ConsumerChannel,
        tag: int,
        redelivered: bool,
    ) -> None:
        super().__init__()
        self._message = message
        self._channel = channel
        self._tag = tag
        self._redelivered = redelivered
        self._headers: dict[str, str] | None = None
        self.position: int | None = None
        """Stream deliveries: the stream offset to resume from once this one is
        settled (its offset + 1); ``None`` for queue deliveries."""

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = text_headers(self._message.header.properties.headers)
        return self._headers

    @property
    def redelivered(self) -> bool:
        return self._redelivered

    async def ack(self) -> None:
        """Settle the message. Sent with the other acks of this step when the
        consuming task next yields; a no-op if the channel was lost meanwhile
        (then the broker delivers the message again)."""
        self.ack_inline()

    def ack_inline(self) -> None:
        """``ack`` as a plain call (it does no I/O itself), which
        :func:`~factbus.transport.ack_all` uses instead of a coroutine per delivery.

        :raises TransportError: it was acked or nacked before.
        """
        self._settle_once()
        self._channel.settle(self._tag, None)
        if self.position is not None:
            self._channel.owner.settled(self, None)

    async def nack(self, requeue: bool = True) -> None:
        """Give the message back (``requeue``) or dead-letter it natively (not
        ``requeue``: it lands in ``<topic>.dead-letter`` with reason ``broker:
        rejected``). Sent in order with this step's acks."""
        self._settle_once()
        if self.position is not None:  # a stream: nothing is requeued, re-read instead
            self._channel.settle(self._tag, None)
            self._channel.owner.settled(self, requeue)
            return
        self._channel.settle(self._tag, requeue)


class _ConsumerChannel:
    """One channel incarnation of a subscription: its deliveries and their settling.

    Settlements are queued and sent by one task, in order, so a coalesced
    ``ack(multiple=True)`` never covers a tag that is still unsettled or that a
    nack queued earlier: it only acks the run of oldest unsettled tags that were
    all acked.
    """

    __slots__ = ("_flush", "_intents", "alive", "owner", "raw", "unsettled")

    def __init__(self, owner: AmqpSubscription, raw: aiormq.abc.AbstractChannel) -> None:
        self.owner = owner
        self.raw = raw
        self.alive = True
        self.unsettled: dict[int, None] = {}
        """Delivery tags received and not yet settled on the wire, oldest first."""
        self._intents: list[tuple[int, bool | None]] = []
        self._flush: asyncio.Task[None] | None = None

    async def on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        if not self.alive:
            return  # the broker requeued it when this channel closed
        frame = message.delivery
        assert isinstance(frame, spec.Basic.Deliver)
        tag = frame.delivery_tag
        assert tag is not None
        self.unsettled[tag] = None
        self.owner.receive(AmqpDelivery(message, self, tag, bool(frame.redelivered)))

    def settle(self, tag: int, requeue: bool | None) -> None:
        """Queue an ack (``requeue is None``) or a nack of ``tag``."""
        if not self.alive:
            return
        self._intents.append((tag, requeue))
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._send())

    def stop(self) -> None:
        """The channel is gone (or being replaced): its settlements are void. Ends the
        sending task too, which could otherwise wait for ever on the write queue
        of a dead connection (aiormq does not wake what waits there)."""
        self.alive = False
        self._intents.clear()
        flush = self._flush
        if flush is not None and flush is not asyncio.current_task():
            flush.cancel()
            # A task cancelled before its first step never runs its ``finally``:
            # left here, it would keep drain() looping until its timeout.
            self._flush = None

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until every queued settlement is on its way."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                while (flush := self._flush) is not None:
                    await asyncio.wait((flush,))  # not raising if stop() cancelled it

    async def _send(self) -> None:
        raw = self.raw
        unsettled = self.unsettled
        try:
            while self._intents and self.alive:
                intents, self._intents = self._intents, []
                acked: set[int] = set()
                for tag, requeue in intents:
                    if requeue is None:
                        acked.add(tag)
                    elif tag in unsettled:
                        del unsettled[tag]
                        await raw.basic_nack(tag, requeue=requeue, wait=False)
                run: list[int] = []
                for tag in unsettled:
                    if tag not in acked:
                        break
                    run.append(tag)
                for tag in run:
                    del unsettled[tag]
                if run:
                    await raw.basic_ack(run[-1], multiple=len(run) > 1, wait=False)
                for tag in sorted(acked.difference(run)):
                    if tag in unsettled:
                        del unsettled[tag]
                        await raw.basic_ack(tag, wait=False)
        except Exception as error:  # the channel is gone: the broker delivers them again
            log.debug("amqp acks not sent", error=repr(error))
        finally:
            if not self.alive:
                self._intents.clear()
            self._flush = None


class AmqpSubscription(BufferedSubscription[AmqpDelivery]):
    """One group's subscription to one topic: a consumer on the group's queue.

    Only one task may consume it. While the connection is being restored,
    ``next_batch`` simply finds nothing; deliveries buffered from a lost
    channel are dropped (the broker delivers them again). ``next_batch``
    raises :class:`FatalTransportError` once the subscription's queue cannot be
    restored after a reconnection (it conflicts with what the broker has).
    """

    def __init__(self, transport: AmqpTransport, topic: str, group: str) -> None:
        super().__init__()
        self._transport = transport
        self._topic = topic
        self._group = group
        self._channel: _ConsumerChannel | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    # -- what RecoveringConnection calls (the Consumer protocol) ---------------------

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str:
        return self._group

    @property
    def active(self) -> bool:
        return not self._closed

    @property
    def log_start(self) -> int | str | None:
        return None  # the group's queue

    def settled(self, delivery: AmqpDelivery, requeue: bool | None) -> None:
        """A stream delivery was acked (``None``) or nacked; queues need nothing."""

    def attached(self, channel: aiormq.abc.AbstractChannel) -> ConsumerCallback:
        self.detached()
        state = self._channel = _ConsumerChannel(self, channel)
        return state.on_message

    def detached(self) -> None:
        state, self._channel = self._channel, None
        if state is not None:
            state.stop()
            self._buffer.clear()

    def failed(self, error: BaseException) -> None:
        self._fail(
            FatalTransportError(
                f"subscription to {self._topic!r} as {self._group!r} failed: {error}"
            )
        )

    def receive(self, delivery: AmqpDelivery) -> None:
        self._deliver((delivery,))

    # -- Subscription (next_batch and iteration: BufferedSubscription) --------------

    async def aclose(self) -> None:
        """Stop consuming: queued acks are sent, then the channel closes and the
        broker requeues every unacknowledged delivery. Idempotent."""
        if self._closed:
            return
        self._close_buffer()
        state = self._channel
        if state is not None:
            await state.drain(self._transport.config.connect_timeout)
        link = self._transport.link
        if link is not None:
            await link.remove_consumer(self)
        self.detached()
        self._transport.forget(self)

    def __repr__(self) -> str:
        return f"AmqpSubscription(topic={self._topic!r}, group={self._group!r})"


class AmqpLogSubscription(AmqpSubscription):
    """A fan-out node reading ``<topic>.stream`` from a position (``history=stream``).

    The stream keeps every message; the reader asks for ``x-stream-offset`` at
    each attach: first the position it was given (or ``first``), after a lost
    channel the oldest offset it received and did not ack (or the one after the
    last it received). RabbitMQ may start a little before the asked offset (at
    its chunk's start): those messages are acked and skipped. If the first
    record it gets is past the asked offset, the stream lost history (a retention
    policy removed records): warning ``amqp stream lost history``. A
    ``nack(requeue=True)`` re-attaches at the nacked offset (and drops what was
    buffered), so nothing after it is settled first: the positions the bus
    commits never pass an unsettled message.
    """

    def __init__(
        self, transport: AmqpTransport, topic: str, node: str, position: int | None
    ) -> None:
        super().__init__(transport, topic, node)
        self._resume: int | None = position
        self._floor = position or 0
        self._open: dict[int, None] = {}
        """Offsets received on the current channel and not settled, oldest first."""
        self._last: int | None = None

    @property
    def log_start(self) -> int | str:
        return "first" if self._resume is None else self._resume

    def attached(self, channel: aiormq.abc.AbstractChannel) -> ConsumerCallback:
        callback = super().attached(channel)
        self._floor = self._resume or 0
        return callback

    def detached(self) -> None:
        if self._open:
            self._resume = min(self._open)
        elif self._last is not None:
            self._resume = self._last + 1
        self._open.clear()
        self._last = None
        super().detached()

    def receive(self, delivery: AmqpDelivery) -> None:
        headers = delivery._message.header.properties.headers or {}
        offset = headers.get("x-stream-offset")
        if not isinstance(offset, int):
            self.failed(TransportError(f"{stream_name(self.topic)!r} sent no x-stream-offset"))
            return
        if offset < self._floor or (self._last is not None and offset <= self._last):
            delivery._settle_once()
            delivery._channel.settle(delivery._tag, None)  # before the asked offset
            return
        if self._last is None and offset > self._floor:
            log.warning(
                "amqp stream lost history",
                stream=stream_name(self.topic),
                asked=self._floor,
                first=offset,
                hint="records before the first offset were removed (a retention policy on "
                "the stream); this node misses them: catch up from a peer",
            )
        self._last = offset
        self._open[offset] = None
        delivery.position = offset + 1
        super().receive(delivery)

    def settled(self, delivery: AmqpDelivery, requeue: bool | None) -> None:
        assert delivery.position is not None
        if delivery._channel is not self._channel:
            return  # from a channel already replaced
        offset = delivery.position - 1
        if not requeue:
            self._open.pop(offset, None)
            return
        self.detached()  # resume at the oldest unsettled offset: this one or before
        link = self._transport.link
        if link is not None and not self._closed:
            task = asyncio.get_running_loop().create_task(link.restart_consumer(self))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    def __repr__(self) -> str:
        return f"AmqpLogSubscription(topic={self.topic!r}, node={self.group!r})"


class AmqpTransport(TransportBase):
    """The transport for ``amqp://`` and ``amqps://`` URLs (options: :mod:`factbus_amqp.config`).

    Concurrency: ``publish`` and ``dead_letter`` may run from many tasks at once;
    they share one confirm-mode channel. Failure: every broker operation waits
    for a lost connection to come back for up to ``publish_timeout`` seconds.
    """

    capabilities = _CAPABILITIES

    def __init__(self, url: str) -> None:
        self.config = AmqpConfig.from_url(url)
        self._url = url
        self.link: RecoveringConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._subscriptions: set[AmqpSubscription] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    # -- life cycle ----------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection. Idempotent.

        :raises TransportError: the broker cannot be reached or refused the login.
        """
        async with self._connect_lock:
            if self.link is not None and self.link.is_open:
                return
            link = RecoveringConnection(self.config)
            await link.open()
            self.link = link
            self._closed = False

    async def aclose(self) -> None:
        """Wait for publishes in flight (up to ``publish_timeout``), close every
        subscription, then the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.publish_timeout):
                await self._idle.wait()
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        link, self.link = self.link, None
        if link is not None:
            await link.aclose()

    def forget(self, subscription: AmqpSubscription) -> None:
        self._subscriptions.discard(subscription)

    async def _link(self) -> RecoveringConnection:
        if self._closed:
            raise TransportError("the amqp transport is closed")
        if self.link is None:
            await self.connect()
        assert self.link is not None
        return self.link

    # -- publishing ------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Send ``messages`` to ``topic``'s exchange; return when all are confirmed.

        All messages are written, then all confirms awaited together. Messages
        cut off by a lost connection are sent again on the next one (so some may
        arrive twice); the whole call takes at most ``publish_timeout`` seconds.

        :raises PublishError: a message was unroutable (``unroutable=error`` and no
            queue is bound yet), refused by the broker (nack), or not confirmed in time.
        """
        if not messages:
            return
        link = await self._publish_link()
        self._inflight += 1
        self._idle.clear()
        try:
            mandatory = self.config.unroutable == "error"
            routed = [
                (m.body, _routing_key(m.key), _properties(m.message_id, m.headers))
                for m in messages
            ]
            await self._confirmed(link, topic, topic, routed, ("exchange", topic), mandatory)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _publish_link(self) -> RecoveringConnection:
        """The connection to publish on.

        :raises PublishError: the broker cannot be reached.
        """
        try:
            return await self._link()
        except TransportError as error:
            raise PublishError(str(error)) from None

    @contextlib.asynccontextmanager
    async def _publishing(self) -> AsyncIterator[RecoveringConnection]:
        """The connection to publish on; the block counts as a publish in flight,
        which :meth:`aclose` waits for (``publish`` does the same inline: it runs
        per message at a few thousand calls per second).

        :raises PublishError: the broker cannot be reached.
        """
        link = await self._publish_link()
        self._inflight += 1
        self._idle.clear()
        try:
            yield link
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _confirmed(
        self,
        link: RecoveringConnection,
        topic: str,
        exchange: str,
        routed: list[tuple[bytes, str, spec.Basic.Properties]],
        declared: tuple[str, str],
        mandatory: bool,
    ) -> None:
        """Publish ``routed`` to ``exchange`` and await every confirm, sending again
        what a lost connection cut off until ``publish_timeout`` runs out.

        ``declared`` is what the exchange needs declared first (``("exchange",
        topic)`` or ``("dead-letter", topic)``), once per connection. One message
        is published and confirmed in the calling task; several are written
        together (a task each), then their confirms awaited together.

        The round runs bound to its connection (:meth:`Live.bound`): if the
        connection is lost before every confirm came, the round ends at once and
        what was not confirmed is sent again on the next connection. A confirm
        that fails because its channel or connection closed counts the same,
        whatever aiormq failed it with."""
        loop = asyncio.get_running_loop()
        timeout = self.config.publish_timeout
        deadline = loop.time() + timeout
        pending = routed
        last_error: BaseException | None = None
        while True:
            channel: aiormq.Channel | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    try:
                        live = await link.live()
                    except TransportError as error:  # closed meanwhile
                        raise PublishError(str(error)) from None
                    try:
                        with live.bound():
                            if declared not in live.declared:
                                await link.declare(live, declared)
                            channel = await link.publish_channel(live)
                            if len(pending) == 1:
                                results = [
                                    await _publish_one(channel, exchange, pending[0], mandatory)
                                ]
                            else:
                                sends = [_send(channel, exchange, m, mandatory) for m in pending]
                                results = await asyncio.gather(*sends, return_exceptions=True)
                    except TOPOLOGY_ERRORS as error:
                        raise PublishError(f"cannot publish to {exchange!r}: {error}") from None
                    except CONNECTION_ERRORS as error:
                        results = [error] * len(pending)
            except TimeoutError:
                raise PublishError(
                    f"{len(pending)} of {len(routed)} messages to {exchange!r} not confirmed "
                    f"within publish_timeout={timeout}s"
                    + (
                        f" (last error: {link.scrub(last_error)})"
                        if last_error
                        else " (the connection was lost and is not back yet)"
                        if not link.ready
                        else " (no confirm and no error came: the broker may be blocking "
                        "publishers, or the connection went silent, which heartbeats notice "
                        f"after about {3 * (self.config.heartbeat + 1)}s)"
                    )
                ) from None
            cut = not live.alive or channel is None or channel.is_closed
            failed: list[tuple[bytes, str, spec.Basic.Properties]] = []
            for item, result in zip(pending, results, strict=True):
                if not isinstance(result, BaseException):
                    if isinstance(result, spec.Basic.Ack):
                        continue
                    raise PublishError(f"the broker refused message {item[2].message_id!r}")
                if isinstance(result, aiormq.exceptions.PublishError):
                    raise PublishError(
                        f"message {item[2].message_id!r} to {topic!r} is unroutable: no group "
                        "has subscribed to this topic yet (use unroutable=drop to discard such "
                        "messages silently)"
                    )
                if isinstance(result, aiormq.exceptions.DeliveryError):
                    raise PublishError(f"the broker refused message {item[2].message_id!r}")
                if cut or isinstance(result, (*CONNECTION_ERRORS, asyncio.CancelledError)):
                    # Cut off: aiormq fails the confirms of a closed channel with the
                    # close's cause, or a bare Exception() when the broker closed
                    # the connection cleanly.
                    if type(result) is Exception:
                        result = ConnectionLost(f"the amqp connection was lost ({live.lost})")
                    last_error = result
                    failed.append(item)
                    continue
                raise PublishError(f"cannot publish to {exchange!r}: {result!r}") from result
            if not failed:
                return
            # The channel or the connection broke: maybe the exchange went with it.
            link.forget(live, topic)
            pending = failed
            await asyncio.sleep(min(self.config.reconnect_delay, max(deadline - loop.time(), 0)))

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str) -> AmqpSubscription:
        """Declare the group's queue, bind it and start consuming; return once bound.

        :raises ConfigError: ``group`` would collide with the dead-letter queue.
        :raises FatalTransportError: the queue conflicts with one on the broker
            (``PRECONDITION_FAILED``) or access is refused.
        :raises TransportError: the broker stayed unreachable for ``publish_timeout``
            seconds.
        """
        if dead_letter_topic(topic) == f"{topic}.{group}":
            raise ConfigError(f"group name {group!r} is reserved for dead letters")
        if self.config.history == "stream" and stream_name(topic) == f"{topic}.{group}":
            raise ConfigError(f"group name {group!r} is reserved for the topic's stream")
        link = await self._link()
        subscription = AmqpSubscription(self, topic, group)

        async def attach(live: Live) -> None:
            await link.add_consumer(live, subscription)

        await self._retrying(link, f"subscribe to {topic!r}", attach)
        self._subscriptions.add(subscription)
        return subscription

    def position_key(self, topic: str) -> str | None:
        """``amqp-stream:<vhost>:<topic>.stream`` with ``history=stream``, else ``None``."""
        if self.config.history != "stream":
            return None
        return f"amqp-stream:{self.config.vhost}:{stream_name(topic)}"

    async def subscribe_log(
        self, topic: str, node: str, position: int | None
    ) -> AmqpLogSubscription:
        """Read ``<topic>.stream`` from ``position`` (the first offset when ``None``);
        return once the reader is attached (see :class:`AmqpLogSubscription`).

        :raises ConfigError: the transport was not opened with ``history=stream``.
        :raises FatalTransportError: the stream conflicts with a queue on the
            broker (or the broker has no streams: RabbitMQ < 3.9).
        :raises TransportError: the broker stayed unreachable for
            ``publish_timeout`` seconds.
        """
        if self.config.history != "stream":
            raise ConfigError("reading a topic's log needs the amqp option history=stream")
        link = await self._link()
        subscription = AmqpLogSubscription(self, topic, node, position)

        async def attach(live: Live) -> None:
            await link.add_consumer(live, subscription)

        await self._retrying(link, f"read the stream of {topic!r}", attach)
        self._subscriptions.add(subscription)
        return subscription

    # -- dead letters ------------------------------------------------------------------

    async def dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], reason: str
    ) -> None:
        """Publish to ``<topic>.dead-letter`` with ``reason`` in header
        ``x-factbus-dead-letter-reason``; return once confirmed.

        :raises PublishError: not confirmed within ``publish_timeout``.
        """
        async with self._publishing() as link:
            letter: FieldTable = {**dead_letter_headers(headers, topic, reason)}
            properties = spec.Basic.Properties(delivery_mode=PERSISTENT, headers=letter)
            await self._confirmed(
                link,
                topic,
                dead_letter_topic(topic),
                [(body, "", properties)],
                ("dead-letter", topic),
                True,
            )

    async def read_dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of ``topic``, oldest first, leaving
        them in place: they are fetched unacknowledged on a channel of their own,
        whose closing puts them back at their positions.

        :raises TransportError: the broker stayed unreachable for ``publish_timeout``.
        """
        if limit <= 0:
            return []
        link = await self._link()
        name = dead_letter_topic(topic)

        async def peek(live: Live) -> list[DeadLetter]:
            await link.declare_dead_letter(live, topic)
            channel = live.connection.channel(publisher_confirms=False)
            await channel.initialize()
            letters: list[DeadLetter] = []
            try:
                raw = await channel.get_underlay_channel()
                while len(letters) < limit:
                    got = await raw.basic_get(name, no_ack=False)
                    if not isinstance(got.delivery, spec.Basic.GetOk):
                        break
                    letters.append(_dead_letter(got))
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            return letters

        return await self._retrying(link, f"read dead letters of {topic!r}", peek)

    async def purge_dead_letters(self, topic: str) -> int:
        """Remove every dead letter of ``topic``; return how many were removed.

        :raises TransportError: the broker stayed unreachable for ``publish_timeout``.
        """
        link = await self._link()

        async def purge(live: Live) -> int:
            await link.declare_dead_letter(live, topic)
            admin = await link.admin_channel(live)
            raw = await admin.get_underlay_channel()
            result = await raw.queue_purge(dead_letter_topic(topic))
            return int(result.message_count or 0)

        return await self._retrying(link, f"purge dead letters of {topic!r}", purge)

    # -- removal -----------------------------------------------------------------------

    async def remove(self, topic: str, groups: Sequence[str]) -> list[str]:
        """Delete the queues ``<topic>.<group>`` of ``groups``, ``<topic>.dead-letter``
        and ``<topic>.stream``, then the exchanges ``<topic>`` and
        ``<topic>.dead-letter`` (:mod:`factbus_amqp.removal`, on a connection of its
        own; see :class:`~factbus.transport.base.RemovesTopics`). This transport's
        own connection remembers what it declared: use a new transport for a
        removed topic.

        :raises TransportError: the broker cannot be reached.
        """
        queues = [queue_name(topic, group) for group in groups]
        queues += [dead_letter_topic(topic), stream_name(topic)]
        try:
            return await removal.delete(self.config, queues, [topic, dead_letter_topic(topic)])
        except (OSError, aiormq.exceptions.AMQPError) as error:
            raise TransportError(f"cannot remove {topic!r}: {error}") from error

    # -- lag (metrics) -----------------------------------------------------------------

    async def lag(self, topic: str, group: str) -> dict[str, int]:
        """``{"queue": n}``: messages ready in ``group``'s queue (a passive declare
        on a channel of its own); ``{}`` when the queue does not exist.

        :raises TransportError: the broker stayed unreachable for ``publish_timeout``.
        """
        link = await self._link()
        name = queue_name(topic, group)

        async def depth(live: Live) -> dict[str, int]:
            channel = live.connection.channel(publisher_confirms=False)
            await channel.initialize()
            try:
                raw = await channel.get_underlay_channel()
                try:
                    declared = await raw.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return {}
                return {"queue": int(declared.message_count or 0)}
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

        return await self._retrying(link, f"measure the lag of {name!r}", depth)

    # -- helpers -----------------------------------------------------------------------

    async def _retrying(
        self,
        link: RecoveringConnection,
        what: str,
        operation: Callable[[Live], Awaitable[T]],
    ) -> T:
        """Run ``operation`` on the live connection, again after each connection
        failure, for up to ``publish_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        timeout = self.config.publish_timeout
        deadline = loop.time() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    live = await link.live()
                    try:
                        with live.bound():
                            return await operation(live)
                    except TOPOLOGY_ERRORS as error:
                        raise FatalTransportError(f"cannot {what}: {error}") from None
                    except CONNECTION_ERRORS as error:
                        last_error = error
            except TimeoutError:
                raise TransportError(
                    f"cannot {what}: no answer within publish_timeout={timeout}s"
                    + (f" (last error: {link.scrub(last_error)})" if last_error else "")
                ) from None
            await asyncio.sleep(min(self.config.reconnect_delay, max(deadline - loop.time(), 0)))

    def __repr__(self) -> str:
        return f"AmqpTransport({redact(self._url)!r})"


def _send(
    channel: aiormq.Channel,
    exchange: str,
    item: tuple[bytes, str, spec.Basic.Properties],
    mandatory: bool,
) -> Awaitable[object]:
    """The ``basic_publish`` of one pending message (body, routing key,
    properties), not yet awaited: its confirm (publisher confirms are on)."""
    body, key, properties = item
    return channel.basic_publish(
        body,
        exchange=exchange,
        routing_key=key,
        properties=properties,
        mandatory=mandatory,
        wait=False,
    )


async def _publish_one(
    channel: aiormq.Channel,
    exchange: str,
    item: tuple[bytes, str, spec.Basic.Properties],
    mandatory: bool,
) -> object:
    """``basic_publish`` of one message awaited in the calling task: its confirm,
    or the error it failed with, as ``asyncio.gather(..., return_exceptions=True)``
    would return them, without the task and the gathering future (two more
    turns of the loop per call). A cancellation of the calling task (its
    ``publish_timeout``, or the loss of its connection: :meth:`Live.bound`)
    propagates; a confirm cancelled under it (its channel closed) is returned
    like the other errors."""
    try:
        return await _send(channel, exchange, item, mandatory)
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return error
    except Exception as error:
        return error


def _routing_key(key: str | None) -> str:
    # AMQP routing keys are short strings (at most 255 bytes).
    if not key or len(key.encode()) > 255:
        return ""
    return key


def _properties(message_id: str, headers: Mapping[str, str]) -> spec.Basic.Properties:
    table: FieldTable | None = {**headers} if headers else None
    return MessageProperties(message_id=message_id, delivery_mode=PERSISTENT, headers=table)


_FLAGS = struct.Struct(">H")
_SIZE = struct.Struct(">I")


class MessageProperties(spec.Basic.Properties):
    """The properties of a message ``publish`` sends (text headers, delivery
    mode, message id), marshalled in one pass.

    pamqp's generic ``Basic.Properties.marshal`` looks up each of the 14
    properties' types and encodes the header table value by value: ~20 µs of
    the publisher's CPU per message, at one message per call a tenth of a
    call's cost. This writes the same bytes (tests/unit/test_amqp_properties.py
    compares them with pamqp's) for the properties above, and leaves
    everything else to pamqp: another property set, a header value that is not
    text, a header name longer than 128 bytes (pamqp truncates it with a
    warning) or a message id longer than 255 bytes (pamqp refuses it).
    """

    def marshal(self) -> bytes:
        fast = self._marshal_fast()
        return fast if fast is not None else super().marshal()

    def _marshal_fast(self) -> bytes | None:
        if any(
            value is not None and value != ""
            for value in (
                self.content_type,
                self.content_encoding,
                self.priority,
                self.correlation_id,
                self.reply_to,
                self.expiration,
                self.timestamp,
                self.message_type,
                self.user_id,
                self.app_id,
                self.cluster_id,
            )
        ):
            return None
        flags = 0
        parts: list[bytes] = []
        # typed, but set by callers: checked as what they may be
        headers: object = self.headers
        if headers is not None and headers != "":
            if not isinstance(headers, dict):
                return None
            flags |= 0x2000
            items: list[bytes] = []
            for key, value in sorted(headers.items()):
                if not isinstance(key, str) or not isinstance(value, str):
                    return None
                name = key.encode()
                if len(name) > 128:
                    return None
                text = value.encode()
                items.append(b"%c%bS%b%b" % (len(name), name, _SIZE.pack(len(text)), text))
            table = b"".join(items)
            parts.append(_SIZE.pack(len(table)))
            parts.append(table)
        mode: object = self.delivery_mode
        if mode is not None:
            if not isinstance(mode, int) or not 0 <= mode <= 255:
                return None
            flags |= 0x1000
            parts.append(bytes((mode,)))
        message_id: object = self.message_id
        if message_id is not None and message_id != "":
            if not isinstance(message_id, str):
                return None
            raw = message_id.encode()
            if len(raw) > 255:
                return None
            flags |= 0x0080
            parts.append(bytes((len(raw),)))
            parts.append(raw)
        return _FLAGS.pack(flags) + b"".join(parts)


def _dead_letter(message: aiormq.abc.DeliveredMessage) -> DeadLetter:
    headers = text_headers(message.header.properties.headers)
    if HEADER_DEAD_LETTER_REASON not in headers and "x-first-death-reason" in headers:
        # Dead-lettered by the broker itself (nack without requeue, expiry, ...).
        headers[HEADER_DEAD_LETTER_REASON] = f"broker: {headers['x-first-death-reason']}"
    return DeadLetter(message.body, headers)


def text_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP headers as text; tables and arrays (the broker's ``x-death``) are left out."""
    if not raw:
        return {}
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            headers[name] = value
        elif isinstance(value, bytes):
            headers[name] = value.decode("utf-8", "replace")
        elif isinstance(value, bool | int | float | Decimal | datetime):
            headers[name] = str(value)
    return headers
