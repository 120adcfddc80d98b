"""Subscriptions: one consumer thread per subscription, its own kombu connection.

kombu is synchronous and its channels are not thread-safe, so each
:class:`KombuSubscription` owns a :class:`QueueConsumer`: a thread with its own
:class:`~factbus_kombu.link.Link` that declares the group's queue, consumes it
and hands what it received to the event loop in batches (one
``call_soon_threadsafe`` per hop, not per message). ``ack``/``nack`` on a
delivery only queue an operation; the consumer thread, which owns the channel,
applies the queued operations between two waits for messages (at most
``factbus_poll_interval`` later), coalescing a run of in-order acks into one
``basic.ack(multiple)`` on AMQP.

Giving messages back (``nack(requeue=True)``, and every unacknowledged message
when a subscription closes):

- AMQP: ``basic.reject(requeue)``; RabbitMQ puts the message back in its queue.
- kombu's virtual transports (redis, ...): kombu's own requeue re-routes the
  message through the topic's exchange, which would copy it into *every* group's
  queue. The consumer instead republishes it to its own queue (through the
  default exchange, marked redelivered) and then acks the original, so only
  this group sees it again (at the back of its queue).

Reconnection: when the connection fails, the thread drops it, reconnects (in
:meth:`Link.open`) and re-declares its queue, because a restarted broker may
have lost it; it keeps trying for as long as the subscription is open.
Deliveries received before the failure are withdrawn from the buffer and their
acks are ignored: the broker hands those messages out again (RabbitMQ at once;
redis after kombu's ``visibility_timeout``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import structlog

from factbus.errors import FatalTransportError, TransportError
from factbus.transport.buffered import BufferedSubscription, SettleOnce
from factbus.urls import redact
from factbus_kombu._driver import Consumer, VirtualQoS
from factbus_kombu.config import KombuConfig
from factbus_kombu.link import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    PERSISTENT,
    Link,
    Stopped,
    body_of,
    dead_letter_queue,
    group_queue,
    headers_of,
)

log = structlog.get_logger("factbus.kombu")

ACK: Final = 0
REQUEUE: Final = 1
DROP: Final = 2
HOP_SECONDS: Final = 0.005
"""How long the consumer thread goes on reading messages that follow one another
before it hands them to the event loop and applies queued acks."""


class KombuDelivery(SettleOnce):
    """One received message; ``ack``/``nack`` queue the settlement for the
    consumer thread (cheap, no round trip on the event loop)."""

    __slots__ = (
        "_body",
        "_consumer",
        "_generation",
        "_headers",
        "_redelivered",
        "_tag",
    )

    def __init__(
        self,
        body: bytes,
        headers: Mapping[str, str],
        redelivered: bool,
        tag: Any,
        generation: int,
        consumer: QueueConsumer,
    ) -> None:
        super().__init__()
        self._body = body
        self._headers = headers
        self._redelivered = redelivered
        self._tag = tag
        self._generation = generation
        self._consumer = consumer

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def redelivered(self) -> bool:
        return self._redelivered

    async def ack(self) -> None:
        """Settle the message (applied by the consumer thread shortly).

        Ignored when the subscription closed or reconnected since the message
        arrived: it was given back and comes again.

        :raises TransportError: already acked or nacked.
        """
        self._settle(ACK)

    async def nack(self, requeue: bool = True) -> None:
        """Give the message back (``requeue``) or drop it (see :meth:`ack`).

        :raises TransportError: already acked or nacked.
        """
        self._settle(REQUEUE if requeue else DROP)

    def _settle(self, operation: int) -> None:
        self._settle_once()
        self._consumer.settle(self._generation, self._tag, operation)


class KombuSubscription(BufferedSubscription[KombuDelivery]):
    """The event-loop side of one subscription (see the module docstring).

    Only one task may consume it. ``next_batch`` never waits for more messages
    than those already received; it raises :class:`TransportError` while the
    consumer has been disconnected for longer than ``factbus_retry_timeout``
    (it keeps reconnecting; a later call may succeed), or once it stopped on an
    unexpected error.
    """

    def __init__(self, config: KombuConfig, topic: str, group: str) -> None:
        super().__init__()
        self.topic = topic
        self.group = group
        self._loop = asyncio.get_running_loop()
        self._generation = 0
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._close_timeout = config.retry_timeout
        self._consumer = QueueConsumer(config, topic, group, self)

    async def start(self) -> None:
        """Start the consumer thread; return once the queue is declared, bound and
        consumed.

        :raises TransportError: the broker could not be reached in time.
        """
        self._consumer.start()
        try:
            await self._ready
        except BaseException:
            self._closed = True
            self._consumer.stop()
            raise

    # -- called on the event loop by the consumer thread --------------------------

    @property
    def orphaned(self) -> bool:
        """True once the event loop that owns the subscription is closed."""
        return self._loop.is_closed()

    def post(self, callback: Any, *args: Any) -> bool:
        """Schedule ``callback(*args)`` on the event loop (from the consumer thread).
        False when the loop is gone."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def on_ready(self, error: TransportError | None) -> None:
        if self._ready.done():
            return
        if error is None:
            self._ready.set_result(None)
        else:
            self._ready.set_exception(error)

    def on_received(self, generation: int, batch: list[KombuDelivery]) -> None:
        if self._closed or generation != self._generation:
            return
        self._deliver(batch)

    def on_generation(self, generation: int) -> None:
        """The consumer lost its connection: withdraw what it received before."""
        self._generation = generation
        self._withdraw(lambda d: d._generation == generation)

    def on_recovered(self) -> None:
        self._recovered()

    def on_failing(self, error: TransportError) -> None:
        self._fail(error)

    def on_finished(self, error: TransportError | None) -> None:
        if error is not None:
            self._fail(error)
        self.on_ready(
            error or TransportError(f"subscription to {self.topic} closed while starting")
        )
        self._readable.set()
        if not self._done.done():
            self._done.set_result(None)

    # -- the Subscription protocol (next_batch, iteration: BufferedSubscription) --

    async def aclose(self) -> None:
        """Stop consuming; unacknowledged deliveries go back to the group (the
        consumer thread gives them back, then closes its connection). Idempotent,
        safe concurrently with :meth:`next_batch` (which then returns ``[]``)."""
        if not self._closed:
            self._close_buffer()
            self._consumer.stop()
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(self._done)
        except TimeoutError:
            log.warning("kombu consumer did not stop in time", topic=self.topic, group=self.group)


class QueueConsumer:
    """The thread that owns one subscription's connection (see the module docstring)."""

    def __init__(
        self, config: KombuConfig, topic: str, group: str, subscription: KombuSubscription
    ) -> None:
        self.config = config
        self.topic = topic
        self.group = group
        self.queue_name = f"{topic}.{group}"
        self.link = Link(config, role=f"consumer {self.queue_name}")
        self._subscription = subscription
        self._ops: collections.deque[tuple[int, Any, int]] = collections.deque()
        self._stopping = threading.Event()
        self._generation = 0
        self._unsettled: dict[Any, Any] = {}
        """Delivery tag -> kombu message, in delivery order (AMQP tags increase)."""
        self._received: list[KombuDelivery] = []
        self._closing = False
        self._kombu_consumer: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"factbus-kombu-{self.queue_name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to give back what is unsettled and close (any thread)."""
        self._stopping.set()

    def settle(self, generation: int, tag: Any, operation: int) -> None:
        """Queue an ack/nack for the consumer thread (any thread; deque is atomic)."""
        self._ops.append((generation, tag, operation))

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        error: TransportError | None = None
        try:
            self._serve()
        except FatalTransportError as exc:  # the broker refuses the queue
            log.error("kombu consumer stopped", queue=self.queue_name, error=str(exc))
            error = exc
        except Exception as exc:  # a bug or an unexpected error: surface it
            log.exception("kombu consumer stopped", queue=self.queue_name)
            error = FatalTransportError(f"consumer of {self.queue_name} stopped: {exc!r}")
        finally:
            self._shutdown()
            self._subscription.post(self._subscription.on_finished, error)

    def _serve(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                self._connect()
            except Stopped:
                return
            except TransportError as exc:
                if first:
                    self._subscription.post(self._subscription.on_ready, exc)
                    return
                if isinstance(exc, FatalTransportError):
                    raise
                self._subscription.post(self._subscription.on_failing, exc)
                continue
            if first:
                first = False
                self._subscription.post(self._subscription.on_ready, None)
            else:
                log.info("kombu consumer reconnected", queue=self.queue_name)
            try:
                self._consume()
                return  # stopping
            except self.link.retryable as exc:
                log.warning(
                    "kombu consumer lost its connection; reconnecting",
                    queue=self.queue_name,
                    url=redact(self.config.url),
                    error=repr(exc),
                )
                self._lost()

    def _connect(self) -> None:
        """Open the link (retrying with back-off) and declare, bind and consume the
        queue (again: a restarted broker may have lost it).

        :raises FatalTransportError: the broker refused the declaration.
        :raises TransportError: not connected within ``factbus_retry_timeout``.
        :raises Stopped: the subscription closed meanwhile.
        """
        deadline = time.monotonic() + self.config.retry_timeout
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            channel = self.link.open(left, stop=self._stopping.is_set)
            try:
                native = not self.config.is_virtual
                if native:
                    dead_letter_queue(self.topic, native)(channel).declare()
                queue = group_queue(self.topic, self.group, native)(channel)
                queue.declare()
                consumer = Consumer(
                    channel,
                    queues=[queue],
                    on_message=self._on_message,
                    no_ack=False,
                    auto_declare=False,
                    prefetch_count=self.config.prefetch,
                )
                consumer.consume()
                self._kombu_consumer = consumer
            except self.link.retryable as exc:
                refused = self.link.refused(exc)
                self._lost()
                if refused:
                    raise FatalTransportError(f"cannot consume {self.queue_name}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise TransportError(f"cannot consume {self.queue_name}: {exc}") from exc
                if self._stopping.wait(0.2):
                    raise Stopped from exc
                continue
            self._subscription.post(self._subscription.on_recovered)
            return

    def _lost(self) -> None:
        """Forget the dead connection's deliveries: the broker hands them out again."""
        self._generation += 1
        self._unsettled.clear()
        self._received.clear()
        self._kombu_consumer = None
        self.link.reset()
        self._subscription.post(self._subscription.on_generation, self._generation)

    def _consume(self) -> None:
        connection = self.link.connection
        channel = self.link.channel
        poll = self.config.poll_interval
        hop = self.config.prefetch
        heartbeat = bool(getattr(connection, "heartbeat", 0))
        received = self._received
        subscription = self._subscription
        while not self._stopping.is_set():
            if self._ops:
                self._apply(channel)
            try:
                connection.drain_events(timeout=poll)
                # Keep reading what follows closely, for one hop of at most HOP_SECONDS.
                hop_end = time.monotonic() + HOP_SECONDS
                while len(received) < hop:
                    left = hop_end - time.monotonic()
                    if left <= 0:
                        break
                    connection.drain_events(timeout=left)
            except TimeoutError:
                pass
            if received:
                batch = received[:]
                received.clear()
                if not subscription.post(subscription.on_received, self._generation, batch):
                    return
            if heartbeat:
                connection.heartbeat_check()
            if subscription.orphaned:  # never closed, and nobody is left to read
                return

    def _on_message(self, message: Any) -> None:
        if self._closing:  # read while closing (the channel may be detached already)
            self._give_back(message.channel, message)
            return
        body = body_of(message)
        headers, redelivered = headers_of(message)
        tag = message.delivery_tag
        self._unsettled[tag] = message
        self._received.append(
            KombuDelivery(body, headers, redelivered, tag, self._generation, self)
        )

    def _apply(self, channel: Any) -> None:
        """Apply the queued acks/nacks of the current connection, in order."""
        ops = self._ops
        unsettled = self._unsettled
        generation = self._generation
        chosen: dict[Any, int] = {}
        while ops:
            op_generation, tag, operation = ops.popleft()
            if op_generation == generation and tag in unsettled:
                chosen[tag] = operation
        if not chosen:
            return
        if not self.config.is_virtual:
            # The acked prefix of what is outstanding: one basic.ack(multiple=True).
            run: list[Any] = []
            for tag in unsettled:
                if chosen.get(tag) != ACK:
                    break
                run.append(tag)
            if len(run) > 1:
                unsettled[run[-1]].ack(multiple=True)
                for tag in run:
                    del unsettled[tag]
                    del chosen[tag]
        acked: list[Any] = []
        for tag, operation in chosen.items():
            message = unsettled.pop(tag)
            if operation == ACK:
                acked.append(message)
            elif operation == REQUEUE:
                self._give_back(channel, message)
            else:
                message.reject(requeue=False)
        if acked:
            ack_all(channel, acked)

    def _give_back(self, channel: Any, message: Any) -> None:
        """Put ``message`` back in this group's queue only (see the module docstring)."""
        if not self.config.is_virtual:
            message.requeue()
            return
        headers, _ = headers_of(message)
        properties: dict[str, Any] = {
            "delivery_mode": PERSISTENT,
            "delivery_info": {"redelivered": True},
        }
        message_id = message.properties.get("message_id")
        if message_id is not None:
            properties["message_id"] = message_id
        channel.basic_publish(
            channel.prepare_message(
                body_of(message), 0, CONTENT_TYPE, CONTENT_ENCODING, dict(headers), properties
            ),
            exchange="",
            routing_key=self.queue_name,
        )
        message.ack()

    def _shutdown(self) -> None:
        """Apply what was settled, give back the rest, close (on the consumer thread)."""
        channel = self.link.channel
        if channel is None:
            return
        self._closing = True
        try:
            self._apply(channel)
            if not self.config.is_virtual and self._kombu_consumer is not None:
                # basic.cancel: what arrives until CancelOk goes through _on_message
                # (closing: given back). Not on virtual transports: there kombu would
                # route a message popped after the cancel to every group's queue.
                self._kombu_consumer.cancel()
            for message in list(self._unsettled.values()):
                self._give_back(channel, message)
            self._unsettled.clear()
        except Exception as exc:
            log.warning(
                "kombu consumer could not give messages back; the broker will",
                queue=self.queue_name,
                error=repr(exc),
            )
            with contextlib.suppress(Exception):
                self.link.reset()
            return
        # Closing may still read one message already in flight; _on_message gives it back.
        self.link.close()


def ack_all(channel: Any, messages: list[Any]) -> None:
    """Ack ``messages`` of ``channel``. kombu's redis transport acks each message
    with a client and a MULTI/EXEC of its own; its QoS can put the removals of
    many into one pipeline, which this uses when available (one round trip)."""
    qos = getattr(channel, "qos", None)
    remove = getattr(qos, "_remove_from_indices", None)
    pipe_or_acquire = getattr(qos, "pipe_or_acquire", None)
    if len(messages) < 2 or remove is None or pipe_or_acquire is None:
        for message in messages:
            message.ack()
        return
    with pipe_or_acquire() as pipe:
        for message in messages:
            remove(message.delivery_tag, pipe)
        pipe.execute()
    forget = VirtualQoS.ack  # the emulation's bookkeeping, without redis' own round trip
    for message in messages:
        forget(qos, message.delivery_tag)
