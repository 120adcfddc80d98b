"""One kombu connection and its channel: the one place that connects and reconnects.

A kombu ``Connection``/``Channel`` is not thread-safe, so each :class:`Link` is
used by exactly one thread: the publisher's single-thread executor, or one
consumer's own thread. Every broker call of the adapter runs through
:meth:`Link.run`, which opens the connection with kombu's
``ensure_connection`` (bounded retries with back-off), runs the operation on
the channel, and on a connection error drops the connection and tries again on
a fresh one until a deadline; errors the broker raises about the operation
itself (a refused declaration, an out-of-memory redis) are not retried. Whoever
re-opens a link re-declares its topology, because a restarted broker may have
lost it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import structlog

from factbus.errors import PublishError, TransportError
from factbus.transport.base import Message, dead_letter_topic
from factbus.urls import redact
from factbus_kombu._driver import Exchange, OperationalError, Queue
from factbus_kombu.config import KombuConfig

log = structlog.get_logger("factbus.kombu")

T = TypeVar("T")

CONTENT_TYPE: Final = "application/octet-stream"
CONTENT_ENCODING: Final = "binary"
"""With this encoding neither kombu nor py-amqp re-encodes the body: bytes stay bytes."""
PERSISTENT: Final = 2
BIND_ALL: Final = "#"
"""Every group queue is bound to its topic's exchange with ``#``: it gets every message."""
REDIS_BATCH: Final = 1000
"""Redis commands buffered per pipeline round trip when publishing a batch."""


class Stopped(Exception):
    """Raised inside a retry loop when the link's owner asked it to stop."""


def exchange(topic: str) -> Any:
    """The topic's exchange: durable, ``topic`` type (works on AMQP and every
    virtual transport; kombu's ``fanout`` on redis is lossy PUB/SUB)."""
    return Exchange(topic, type="topic", durable=True, auto_delete=False, delivery_mode=PERSISTENT)


def group_queue(topic: str, group: str, native: bool) -> Any:
    """``<topic>.<group>``: durable, bound to the topic's exchange with ``#``. On a
    real AMQP broker it dead-letters natively to ``<topic>.dead-letter`` (the same
    queue as factbus' ``amqp://`` adapter declares, so both can share a broker)."""
    arguments = {"x-dead-letter-exchange": dead_letter_topic(topic)} if native else None
    return Queue(
        f"{topic}.{group}",
        exchange(topic),
        routing_key=BIND_ALL,
        durable=True,
        auto_delete=False,
        exclusive=False,
        queue_arguments=arguments,
    )


def dead_letter_queue(topic: str, native: bool) -> Any:
    """``<topic>.dead-letter``, durable. On a real AMQP broker it is bound to a
    fanout exchange of the same name (as with ``amqp://``); on virtual transports
    it is reached through the default exchange (kombu's fanout on redis is lossy)."""
    name = dead_letter_topic(topic)
    if native:
        fanout = Exchange(name, type="fanout", durable=True, auto_delete=False)
        return Queue(name, fanout, routing_key="", durable=True, auto_delete=False)
    return Queue(name, durable=True, auto_delete=False)


def dead_letter_route(topic: str, native: bool) -> tuple[str, str]:
    """(exchange, routing key) that reach ``topic``'s dead-letter queue."""
    name = dead_letter_topic(topic)
    return (name, "") if native else ("", name)


def routing_key(message: Message) -> str:
    """The message's key (the head fact's type) as routing key; bindings are ``#``,
    so it only lets operators bind extra queues by fact type."""
    key = message.key or ""
    return key if len(key.encode()) <= 255 else ""


class Confirms:
    """Publisher confirms of one py-amqp channel, awaited per batch, not per message."""

    def __init__(self, channel: Any) -> None:
        self._next = 1
        self._pending: set[int] = set()
        self._highest = 0
        self._nacked = 0
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.confirm_select()

    def sent(self) -> None:
        """Count one published message (confirm tags follow publish order)."""
        self._pending.add(self._next)
        self._highest = self._next
        self._next += 1

    def _settle(self, tag: int, multiple: bool) -> int:
        before = len(self._pending)
        if not multiple:
            self._pending.discard(tag)
        elif tag >= self._highest:
            self._pending.clear()
        else:
            self._pending = {t for t in self._pending if t > tag}
        return before - len(self._pending)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked += self._settle(tag, multiple)

    def wait(self, connection: Any, timeout: float) -> None:
        """Read confirms until every message sent so far is confirmed.

        :raises PublishError: the broker nacked some, or ``timeout`` passed.
        """
        deadline = time.monotonic() + timeout
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                missing, self._pending = len(self._pending), set()
                raise PublishError(f"{missing} message(s) not confirmed within {timeout:g}s")
            with contextlib.suppress(socket.timeout, TimeoutError):
                connection.drain_events(timeout=left)
        if self._nacked:
            nacked, self._nacked = self._nacked, 0
            raise PublishError(f"the broker refused {nacked} message(s) (basic.nack)")


class Link:
    """A kombu connection plus one channel, owned by one thread (see the module).

    ``declared`` remembers what was declared on the current channel; it is
    emptied whenever the link reconnects, so topology is restored on demand.
    """

    def __init__(self, config: KombuConfig, role: str) -> None:
        self.config = config
        self.role = role
        self.connection: Any = None
        self.channel: Any = None
        self.confirms: Confirms | None = None
        self.declared: set[str] = set()
        self.retryable: tuple[type[BaseException], ...] = ()
        self._connection_errors: tuple[type[BaseException], ...] = ()
        self._channel_errors: tuple[type[BaseException], ...] = ()

    @property
    def is_open(self) -> bool:
        return self.channel is not None

    def open(self, timeout: float, stop: Callable[[], bool] | None = None) -> Any:
        """The channel, connecting first (kombu ``ensure_connection``: retries with
        back-off for up to ``timeout`` seconds) if the link is closed.

        :raises TransportError: no connection within ``timeout``.
        :raises Stopped: ``stop()`` became true while retrying.
        """
        if self.channel is not None:
            return self.channel
        connection = self.config.connection()
        self.retryable = retryable_errors(connection)
        self._connection_errors = (*connection.connection_errors, OperationalError, OSError)
        self._channel_errors = tuple(connection.channel_errors)

        def check_stop() -> None:
            if stop is not None and stop():
                raise Stopped

        def on_error(exc: BaseException, interval: float) -> None:
            log.warning(
                "kombu connection failed; retrying",
                role=self.role,
                url=redact(self.config.url),
                error=str(exc),
                retry_in=interval,
            )
            check_stop()

        try:
            connection.ensure_connection(
                errback=on_error,
                interval_start=0.1,
                interval_step=0.4,
                interval_max=2.0,
                callback=check_stop,
                timeout=max(timeout, 0.001),
            )
            channel = connection.channel()
            confirms = Confirms(channel) if self._confirmable(channel) else None
        except Stopped:
            self._discard(connection)
            raise
        except (*self.retryable, OperationalError) as exc:
            self._discard(connection)
            raise TransportError(f"cannot connect to {redact(self.config.url)}: {exc}") from exc
        self.connection, self.channel, self.confirms = connection, channel, confirms
        self.declared = set()
        return channel

    def _confirmable(self, channel: Any) -> bool:
        # py-amqp channels take confirm.select and report basic.ack/nack as events.
        return (
            not self.config.is_virtual
            and hasattr(channel, "confirm_select")
            and hasattr(channel, "events")
        )

    def run(
        self,
        operation: Callable[[Any], T],
        timeout: float,
        what: str,
        error: type[TransportError] = TransportError,
    ) -> T:
        """Run ``operation(channel)``; on connection errors reconnect and run it
        again until ``timeout`` seconds have passed (so it may run more than once:
        publishing is at-least-once).

        :raises TransportError: (or ``error``) still failing at the deadline, or
            the broker refused the operation itself (a channel error: not retried).
        """
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                channel = self.open(deadline - time.monotonic())
            except TransportError as exc:
                raise error(f"{what} failed: {exc}") from exc.__cause__
            try:
                return operation(channel)
            except PublishError:
                self.reset()
                raise
            except Exception as exc:
                # kombu wraps some connection errors (a failed redis publish pipeline
                # raises BatchPublishError from the redis ConnectionError).
                cause = exc if isinstance(exc, self.retryable) else exc.__cause__
                retry = isinstance(cause, self.retryable) and not self.refused(cause)
                self.reset()
                if not retry or time.monotonic() + delay > deadline:
                    raise error(f"{what} failed: {exc!r}") from exc
                log.warning(
                    "kombu operation failed; reconnecting",
                    role=self.role,
                    what=what,
                    error=str(exc),
                    url=redact(self.config.url),
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def refused(self, exc: BaseException) -> bool:
        """True when the broker refused the operation itself (a channel error):
        reconnecting and trying again would not help."""
        return isinstance(exc, self._channel_errors) and not isinstance(
            exc, self._connection_errors
        )

    def declare(self, key: str, entity: Any) -> None:
        """Declare ``entity`` (exchange or queue, with its binding) once per channel."""
        if key in self.declared:
            return
        entity(self.channel).declare()
        self.declared.add(key)

    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Send ``messages`` to ``topic``'s exchange and wait for their confirms."""
        channel = self.channel
        self.declare("exchange:" + topic, exchange(topic))
        self.send(channel, topic, [(m, routing_key(m)) for m in messages])

    def send(
        self,
        channel: Any,
        exchange_name: str,
        batch: Sequence[tuple[Message, str]],
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``batch`` (message, routing key) to ``exchange_name`` in one go:
        a redis pipeline where kombu offers one, one confirm wait on AMQP."""
        prepare = channel.prepare_message
        confirms = self.confirms
        pipeline = None
        if (
            self.config.is_virtual
            and len(batch) > 1
            and getattr(channel, "supports_batch_publish", False)
            and hasattr(channel, "create_publish_batch")
        ):
            pipeline = channel.create_publish_batch(max_size=REDIS_BATCH)
        publish = pipeline.publish if pipeline is not None else channel.basic_publish
        try:
            for message, key in batch:
                props: dict[str, Any] = {
                    "delivery_mode": PERSISTENT,
                    "message_id": message.message_id,
                }
                if properties:
                    props.update(properties)
                publish(
                    prepare(
                        message.body,
                        0,
                        CONTENT_TYPE,
                        CONTENT_ENCODING,
                        dict(message.headers),
                        props,
                    ),
                    exchange=exchange_name,
                    routing_key=key,
                )
                if confirms is not None:
                    confirms.sent()
            if pipeline is not None:
                pipeline.flush()
        finally:
            if pipeline is not None:
                pipeline.close()
        if confirms is not None:
            confirms.wait(self.connection, self.config.confirm_timeout)

    def keep_alive(self) -> None:
        """Read what the broker sent meanwhile (its heartbeats) and send ours, if
        due. A failed connection is dropped; the next operation reconnects."""
        connection = self.connection
        if connection is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0)
            connection.heartbeat_check()
        except Exception:
            self.reset()

    def reset(self) -> None:
        """Drop the connection without talking to the broker (it may be gone)."""
        connection, self.connection, self.channel, self.confirms = self.connection, None, None, None
        self.declared = set()
        if connection is not None:
            self._discard(connection)

    def close(self) -> None:
        """Close the channel and connection politely; never raises."""
        connection, channel = self.connection, self.channel
        self.connection, self.channel, self.confirms = None, None, None
        self.declared = set()
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()
        if connection is not None:
            try:
                connection.release()
            except Exception:
                self._discard(connection)

    @staticmethod
    def _discard(connection: Any) -> None:
        with contextlib.suppress(Exception):
            connection.collect()


def retryable_errors(connection: Any) -> tuple[type[BaseException], ...]:
    """Errors after which reconnecting may help: kombu's classification for the
    transport, plus socket errors; without ``KeyError``, which kombu lists for
    virtual transports but which would hide bugs here."""
    found: list[type[BaseException]] = []
    for group in (
        connection.connection_errors,
        connection.recoverable_connection_errors,
        connection.recoverable_channel_errors,
        connection.channel_errors,
        (OperationalError, OSError, socket.timeout),
    ):
        for error in group:
            if error is not KeyError and error not in found:
                found.append(error)
    return tuple(found)


_KOMBU_REDELIVERED: Final = "redelivered"
"""A header kombu's virtual transports add (as a boolean) when they restore a message."""


def body_of(message: Any) -> bytes:
    """A received kombu message's body, byte for byte (kombu's virtual transports
    hand an empty body back as ``""``)."""
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


def headers_of(message: Any) -> tuple[dict[str, str], bool]:
    """A received message's headers as ``str -> str`` (without kombu's own
    ``redelivered`` marker), and whether the broker or kombu marked it redelivered."""
    headers: dict[str, str] = {}
    redelivered = bool((message.delivery_info or {}).get("redelivered"))
    for key, value in (message.headers or {}).items():
        if key == _KOMBU_REDELIVERED and isinstance(value, bool):
            redelivered = redelivered or value
        elif isinstance(value, str):
            headers[key] = value
        elif isinstance(value, bytes | bytearray):
            headers[key] = bytes(value).decode("utf-8", "replace")
        else:
            headers[key] = str(value)
    return headers, redelivered
