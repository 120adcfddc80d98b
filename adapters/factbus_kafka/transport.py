"""``kafka://``: the Kafka transport on confluent-kafka (librdkafka).

Topology: each factbus topic is a Kafka topic created on demand (before the first
publish or subscribe) with ``partitions`` partitions; its dead letters go to the
topic ``<topic>.dead-letter`` (one partition). Topics the adapter creates keep
their records for good (``retention.ms=-1``, ``retention.bytes=-1``, no
compaction: see :data:`TOPIC_CONFIG`). A subscription group is a Kafka
consumer group (``group.id``): fan-out gives each node a group of its own, group
mode shares one. A new group starts at the earliest offset, so it reads the
topic's history.

Publishing: one idempotent producer per transport (``acks=all``); ``publish``
hands every message to librdkafka, then awaits all delivery reports together.
While only small calls (fewer than 256 messages) of one event loop are in
flight, that loop polls the producer itself (non-blocking, every millisecond)
and settles the calls completed in place; otherwise a background thread polls
it and, after each ``poll`` round, resolves the futures of every call whose
last report came in that round, with one wake-up of the event loop (not one
per call, nor per message). The thread also fails a call whose reports have
not all come within ``publish_timeout`` + ``request_timeout`` of its last
message's hand-over (a safety net: librdkafka times a message out
``message.timeout.ms`` after its hand-over, which is ``publish_timeout``
unless ``producer.message.timeout.ms`` overrides it; a call larger than
librdkafka's local queue waits for room first, without deadline, and its
early messages may time out meanwhile), so a call awaits its future with no
timer of its own; the thread serves the reports itself whenever the serving
loop has not polled for 25 ms (see :class:`_ProducerThread`). A call cut off
by the producer's end (``aclose``, a replacement after a fatal error, a
failure of the poller thread) raises ``PublishError`` naming that cause.
Messages with a key are partitioned by key; the key-less messages of one call
all go to one partition (chosen round-robin per call), so they keep their
order. Kafka has no message id: it travels as the record's key when it is the
key (every message ``Bus.publish`` makes), else in header
``x-factbus-message-id``; a consumed record reads with that header either way
(``KafkaDelivery.headers`` takes a missing one from the key).

Reconnection: librdkafka reconnects by itself and retries unconfirmed messages
until ``publish_timeout``; consumers rejoin their group and resume from the last
committed offset. A producer that hits a fatal error, or whose poller thread
failed, is replaced on the next publish (``aclose`` waits for the old one's
flush, bounded). See :mod:`factbus_kafka.config` for every URL option and
:mod:`factbus_kafka.offsets` for acknowledgement and nack semantics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

import structlog

from factbus.errors import PublishError, TransportError
from factbus.headers import HEADER_MESSAGE_ID, dead_letter_headers
from factbus.transport.base import (
    Capabilities,
    DeadLetter,
    Message,
    TransportBase,
    dead_letter_topic,
)
from factbus.urls import redact
from factbus_kafka import removal
from factbus_kafka._driver import (
    AdminClient,
    Consumer,
    ConsumerGroupTopicPartitions,
    HeaderList,
    KafkaError,
    KafkaException,
    NewTopic,
    OffsetSpec,
    Producer,
    TopicPartition,
    decode_headers,
)
from factbus_kafka._driver import Message as KafkaMessage
from factbus_kafka.config import KafkaConfig
from factbus_kafka.subscription import KafkaSubscription

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from factbus.transport.base import Transport


TOPIC_CONFIG: Final = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
}
"""Settings of every topic this adapter creates. Facts are immutable and a node that
joins late must find all of them, so nothing expires. Not compaction: records are
keyed by their head fact's hash, but two envelopes with the same head may carry
different ancestors (each producer ships the ancestors it has not shipped before),
so compaction could drop the only copy of an ancestor."""

_YIELD_EVERY: Final = 4096
"""Messages ``publish`` hands to librdkafka between two yields to the event loop."""

log = structlog.get_logger("factbus.kafka")
# librdkafka's own log lines (connection state, retries) go to stdlib logging here.
librdkafka_log = logging.getLogger("factbus.kafka.librdkafka")

_CAPABILITIES = Capabilities(
    persistent=True,
    ordered=True,
    consumer_groups=True,
    replays_history=True,
    redelivers_nacked=True,
    survives_broker_restart=True,
    native_dead_letter=False,
)


class _Confirmations:
    """The delivery reports of one ``publish`` call, counted by whoever polls.

    ``report`` (librdkafka's delivery callback, run by the poller thread or the
    serving event loop, one at a time) counts the call's reports; the last one
    lists the call as settled, and the poller settles every call completed in
    one ``poll`` round together (:meth:`_ProducerThread._hand_over`: in place on
    the serving loop, else with a single wake-up of the call's event loop).
    The poller thread also fails a call whose reports have not all come by its
    ``deadline``, set once the call's last message was handed to librdkafka
    (a safety net: librdkafka reports every message ``message.timeout.ms``
    after its hand-over), or when the poller ends first, so the caller awaits
    the future alone, with no timer of its own.
    """

    __slots__ = (
        "count",
        "deadline",
        "error",
        "failed",
        "failed_key",
        "future",
        "loop",
        "remaining",
        "settled",
        "timeout",
        "topic",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: int,
        topic: str,
        timeout: float,
        settled: list[_Confirmations],
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.count = self.remaining = count
        self.failed = 0
        self.error: KafkaError | None = None
        self.failed_key: str | bytes | None = None
        self.topic = topic
        self.timeout = timeout
        self.deadline = math.inf
        """Set by :meth:`_ProducerThread.watch` once the call's messages are handed over."""
        self.settled = settled

    def report(self, error: KafkaError | None, message: KafkaMessage) -> None:
        """librdkafka's delivery callback (poller thread)."""
        if error is not None:
            self.failed += 1
            if self.error is None:
                self.error = error
                self.failed_key = message.key()
        self.remaining -= 1
        if self.remaining == 0:
            self.settled.append(self)

    def settle(self) -> None:
        """Resolve the future from the reports (event loop)."""
        future = self.future
        if future.done():  # cancelled by the caller, or refused locally
            return
        if self.error is None:
            future.set_result(None)
            return
        future.set_exception(PublishError(f"kafka {self._refused()}"))

    def _refused(self) -> str:
        error = self.error
        assert error is not None
        key = self.failed_key
        first = "" if key is None else f" (the first: key {_text(key)!r})"
        return (
            f"refused {self.failed} of {self.count} message(s) to {self.topic!r}{first}: "
            f"{error.str()}"
        )

    def expire(self, cause: str | None = None) -> None:
        """Fail the call (event loop): its reports did not all come by its
        deadline, or ``cause`` (the producer ended) says why none can come.
        librdkafka's reason for the reports that failed, if any, is kept."""
        if self.future.done():
            return
        why = f"within {self.timeout:.0f}s" if cause is None else f"before {cause}"
        text = f"kafka did not confirm {self.remaining} message(s) to {self.topic!r} {why}"
        if self.error is not None:
            text += f"; it {self._refused()}"
        self.future.set_exception(PublishError(text))


class _CutOff(Exception):
    """A call stops handing messages over: it was failed meanwhile, or its
    producer ended (:meth:`_ProducerThread.watch` then says why)."""


def _text(key: str | bytes) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


def _drop_finished(calls: collections.deque[_Confirmations]) -> bool:
    """Drop the settled or cancelled calls at the head of ``calls``; True if
    any call is left (one still waiting is at the head)."""
    while calls and (calls[0].remaining == 0 or calls[0].future.done()):
        calls.popleft()
    return bool(calls)


def _settle_all(calls: list[_Confirmations]) -> None:
    for call in calls:
        call.settle()


_LOOP_SERVED_MAX: Final = 256
"""Calls of fewer messages than this are served by the event loop (see
:class:`_ProducerThread`); larger ones by the poller thread, whose prompt
wake-up on their last report sets the rate of one big call after another,
and whose cost per wake-up is spread over many messages (PROFILE.md §19)."""

_TICK: Final = 0.001
"""The event loop polls the producer this often while it serves calls (s)."""

_IDLE_TICKS: Final = 4
"""Ticks the event loop goes on polling once its calls are settled, so that a
paced publisher's next call finds it still serving (no hand-back to the thread)."""

_PURGED_REPORTS: Final = 1.0
"""A closing producer serves its purged messages' reports for at most this long (s)."""

_WATCHDOG: Final = 0.025
"""While the event loop serves, the poller thread wakes this often (s): it
checks deadlines and, when the loop has not polled for this long (a busy or
stopped loop), serves the reports itself."""


class _ProducerThread:
    """An idempotent producer and the thread that polls it for delivery reports.

    Calls in flight are listed in ``pending`` once handed over, in deadline
    order (the event loop appends, this thread removes, failing those past
    their deadline). When the thread ends (``stop``, or an exception: a
    backstop), it sets ``ended`` and fails every call still waiting, naming
    that cause; a call handed over later fails at once (:meth:`watch`). Reports
    are served (``poll``) by one thread at a time, under ``_serving``:

    - **the poller thread**, blocked in ``poll``, wakes on each report round
      and hands the calls completed in it to their event loop together (one
      ``call_soon_threadsafe`` per round): while a call of
      ``_LOOP_SERVED_MAX`` messages or more (or one from another event loop)
      is in flight, and whenever no call is;
    - **the event loop**, while only smaller calls of its own are in flight:
      it polls without blocking every ``_TICK`` and settles the completed
      calls in place, with no thread wake-up or GIL hand-off per round (the
      cost of a paced publisher's small calls, PROFILE.md §19). The poller
      thread then only wakes every ``_WATCHDOG`` to check deadlines, and
      serves the reports itself whenever the loop has not polled for that
      long: reports are never left unserved, librdkafka's error and log
      callbacks keep being served, and a call still fails at its deadline.
    """

    def __init__(self, config: KafkaConfig) -> None:
        settings = config.producer_settings()
        settings["error_cb"] = self._on_error
        settings["logger"] = librdkafka_log
        try:
            self.producer = Producer(settings)
        except (KafkaException, ValueError, TypeError) as exc:
            raise TransportError(f"cannot create a Kafka producer: {exc}") from exc
        self.fatal: KafkaError | None = None
        self.settled: list[_Confirmations] = []
        """Calls whose last report came in the current ``poll`` round (the serving thread)."""
        self.pending: collections.deque[_Confirmations] = collections.deque()
        self.closed = False
        """The producer is closed: nobody polls it any more (set under ``_serving``)."""
        self._serving = threading.Lock()
        """Held by whoever serves reports (``poll``, ``flush``): one thread at a time."""
        self._threads_calls: collections.deque[_Confirmations] = collections.deque()
        """Calls in flight that the poller thread serves (event loop appends)."""
        self._loop_calls: collections.deque[_Confirmations] = collections.deque()
        """Calls in flight that the event loop serves (event loop only)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop serving reports, while ``_timer`` is armed."""
        self._timer: asyncio.TimerHandle | None = None
        self._idle = 0
        self._ticked = 0.0
        """When the serving event loop last ran its tick (``time.monotonic``)."""
        self._wake = threading.Event()
        self._flush_timeout = config.publish_timeout
        self._stop = threading.Event()
        self._cause = "its producer was closed"
        """Why the thread stops when asked to (``stop``)."""
        self.ended: str | None = None
        """Why the thread ended (``its producer was closed``...); None while it runs."""
        self._thread = threading.Thread(
            target=self._run, name="factbus-kafka-producer", daemon=True
        )
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------

    def track(self, call: _Confirmations) -> None:
        """List a call about to be produced (event loop): who serves its reports."""
        loop = call.loop
        if call.count < _LOOP_SERVED_MAX and (self._loop is None or self._loop is loop):
            self._loop_calls.append(call)
            if self._timer is None:
                self._loop = loop
                self._idle = 0
                self._ticked = time.monotonic()
                self._timer = loop.call_later(_TICK, self._tick)
        else:
            self._threads_calls.append(call)
            self._wake.set()  # the poller thread may be waiting as the loop's watchdog

    def watch(self, call: _Confirmations) -> None:
        """Start a call's deadline once its messages are handed over (event loop);
        fail it at once if the thread has already ended."""
        call.deadline = time.monotonic() + call.timeout
        self.pending.append(call)
        # The thread sets ``ended`` before failing what ``pending`` holds: either
        # it sees this call there, or this sees ``ended``.
        ended = self.ended
        if ended is not None and call.remaining:
            call.expire(ended)

    def cut_off(self, topic: str, error: RuntimeError) -> Exception:
        """What ``produce``'s ``error`` means (event loop): the producer ended
        (``_CutOff``: :meth:`watch` fails the call naming why), else a refusal."""
        if self.closed or self._stop.is_set() or self.ended is not None:
            return _CutOff()
        return PublishError(f"kafka refused a message for {topic!r}: {error}")

    def _tick(self) -> None:
        """Serve reports from the event loop (non-blocking ``poll``), settle the
        completed calls, and go on while the loop's calls are in flight."""
        self._timer = None
        loop = self._loop
        assert loop is not None
        self._ticked = time.monotonic()
        calls: list[_Confirmations] = []
        if self._serving.acquire(blocking=False):  # else the poller thread serves
            try:
                if not self.closed:
                    self.producer.poll(0)
                    calls = self._take_settled()
            finally:
                self._serving.release()
        if calls:
            self._hand_over(calls, loop)
        if _drop_finished(self._loop_calls):
            self._idle = 0
        elif self._idle < _IDLE_TICKS and not self.closed:
            self._idle += 1
        else:
            self._loop = None  # the poller thread goes back to blocking polls
            return
        self._timer = loop.call_later(_TICK, self._tick)

    # -- the poller thread ---------------------------------------------------------------

    def _loop_serves(self) -> bool:
        """The event loop serves every call in flight (poller thread)."""
        return self._loop is not None and not _drop_finished(self._threads_calls)

    def _run(self) -> None:
        """Serve reports until stopped, then flush and close; whatever ends the
        thread, every call still waiting fails naming the cause."""
        try:
            self._serve()
        except BaseException as exc:
            cause = f"its producer's poller thread failed ({exc!r})"
            log.exception("kafka producer poller failed; it is replaced on the next publish")
            self.ended = cause  # before failing the calls listed: see watch()
            self._expire(math.inf, cause)
            self._abandon()
        else:
            self.ended = self._cause
        self._expire(math.inf, self.ended)  # no report can come any more

    def _abandon(self) -> None:
        """After a failure of the thread: close the producer (bounded, see
        :meth:`_close`) and settle the calls completed meanwhile."""
        calls: list[_Confirmations] = []
        with self._serving:
            if not self.closed:
                with contextlib.suppress(Exception):
                    self._close()
                self.closed = True
            calls = self._take_settled()
        if calls:
            with contextlib.suppress(Exception):
                self._hand_over(calls, None)

    def _serve(self) -> None:
        producer = self.producer
        pending = self.pending
        serving = self._serving
        while not self._stop.is_set():
            timeout = 0.1
            if self._loop_serves():
                self._wake.wait(_WATCHDOG)
                self._wake.clear()
                if pending:
                    self._expire(time.monotonic())
                if self._loop_serves() and time.monotonic() - self._ticked < _WATCHDOG:
                    continue
                timeout = 0.0 if self._loop_serves() else 0.1  # a late loop: serve for it
            with serving:
                producer.poll(timeout)
                calls = self._take_settled()
            if calls:
                self._hand_over(calls, None)
            if pending:
                self._expire(time.monotonic())
        with serving:
            # Destroy the librdkafka handle now: left to the garbage collector (error_cb makes
            # a reference cycle) its threads would keep connections and metadata refreshes alive.
            self._close()
            self.closed = True
            calls = self._take_settled()
        if calls:
            self._hand_over(calls, None)

    def _close(self) -> None:
        """Flush for up to ``publish_timeout``, purge what is still unconfirmed, and
        close the producer (poller thread, under ``_serving``).

        confluent-kafka's ``close()`` flushes without a bound of its own, so with
        ``producer.message.timeout.ms`` above ``publish_timeout`` it could last
        that long. Purged messages (logged with their count) are lost to this
        transport: those still queued were never sent, those in flight may or
        may not be in the log; their calls raise ``PublishError`` with
        librdkafka's purge reason, or naming the producer's end.
        """
        producer = self.producer
        left = producer.flush(self._flush_timeout)
        if left:
            log.warning(
                "kafka producer closing with unconfirmed messages; purged (their publish "
                "calls fail; whether those in flight reached the log is unknown)",
                messages=left,
                waited=self._flush_timeout,
            )
            producer.purge(in_queue=True, in_flight=True)
            producer.flush(_PURGED_REPORTS)  # serve the purged messages' reports
        producer.close()

    def _take_settled(self) -> list[_Confirmations]:
        """The calls completed in this ``poll`` round, taken (under ``_serving``)."""
        calls = self.settled[:]
        self.settled.clear()
        return calls

    @staticmethod
    def _hand_over(calls: list[_Confirmations], here: asyncio.AbstractEventLoop | None) -> None:
        """Settle calls completed in one ``poll`` round: in place for those of
        ``here`` (the serving event loop), with one wake-up per other event loop."""
        loop = calls[0].loop
        if any(call.loop is not loop for call in calls):
            by_loop: dict[asyncio.AbstractEventLoop, list[_Confirmations]] = {}
            for call in calls:
                by_loop.setdefault(call.loop, []).append(call)
        else:
            by_loop = {loop: calls}
        for target, group in by_loop.items():
            if target is here:
                _settle_all(group)
                continue
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                target.call_soon_threadsafe(_settle_all, group)

    def _expire(self, now: float, cause: str | None = None) -> None:
        """Forget settled calls at the head of ``pending``; fail those past their
        deadline (``cause``: why, when not the deadline)."""
        pending = self.pending
        late: list[_Confirmations] = []
        while pending:
            call = pending[0]
            waiting = call.remaining > 0 and not call.future.done()
            if waiting and call.deadline > now:
                break
            pending.popleft()
            if waiting:
                late.append(call)
        for call in late:
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                call.loop.call_soon_threadsafe(call.expire, cause)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
            log.error("kafka producer failed; it is replaced on the next publish", error=str(error))
        else:
            log.debug("kafka producer connection event", error=str(error))

    def stop(self, cause: str = "its producer was closed") -> None:
        """Ask the poller to flush (bounded by ``publish_timeout``) and end;
        calls still unconfirmed then fail naming ``cause``."""
        self._cause = cause
        self._stop.set()
        self._wake.set()

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush (bounded by ``publish_timeout``) and stop the poller; wait for
        the thread at most ``timeout`` seconds (None: until it ends)."""
        if not self._stop.is_set():
            self.stop("the transport was closed")
        await asyncio.to_thread(self._thread.join, timeout)


class _Admin:
    """The transport's AdminClient, held here so that ``aclose`` can drop the only
    reference: confluent-kafka's AdminClient has no ``close`` (its librdkafka threads
    stop when it is deallocated), and frames kept alive by an exception's traceback
    (a reference cycle) hold this holder, never the client itself."""

    __slots__ = ("_client",)

    def __init__(self, client: AdminClient) -> None:
        self._client: AdminClient | None = client

    @property
    def client(self) -> AdminClient:
        client = self._client
        if client is None:
            raise TransportError("transport is closed")
        return client

    def close(self) -> None:
        self._client = None


class KafkaTransport(TransportBase):
    """The transport for ``kafka://host:port[,host:port...]?options``.

    Concurrency: ``publish``, ``subscribe`` and the dead-letter methods may be called
    from many tasks at once. Ordering: per partition; one call's key-less messages
    share a partition. Failure: ``publish`` returns once every message has an
    ``acks=all`` delivery report; see the module docstring for the rest.
    """

    capabilities = _CAPABILITIES

    def __init__(self, url: str) -> None:
        self._url = url
        self.config = KafkaConfig.from_url(url)
        self._producer: _ProducerThread | None = None
        self._retired: list[_ProducerThread] = []
        """Producers replaced (fatal error, failed poller) whose threads may still
        be flushing: ``aclose`` waits for them."""
        self._admin: _Admin | None = None
        self._topics: dict[str, asyncio.Future[int]] = {}
        self._partitions: dict[str, int] = {}
        """Partition counts of the topics known ready: ``publish``'s fast path."""
        self._subscriptions: set[KafkaSubscription] = set()
        self._round_robin = itertools.count()
        self._closed = False
        self._connecting: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"KafkaTransport({redact(self._url)!r})"

    # -- connection -----------------------------------------------------------------

    async def connect(self) -> None:
        """Create the admin client and producer and check that a broker answers.
        Idempotent; also reopens a closed transport.

        :raises TransportError: no broker answered within ``request_timeout``.
        """
        if self._producer is not None and not self._closed:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._producer is not None and not self._closed:
                return
            settings = self.config.admin()
            settings["logger"] = librdkafka_log
            try:
                admin = _Admin(AdminClient(settings))
            except (KafkaException, ValueError, TypeError) as exc:
                raise TransportError(f"cannot create a Kafka admin client: {exc}") from exc
            try:
                await asyncio.to_thread(
                    admin.client.list_topics, timeout=self.config.request_timeout
                )
            except KafkaException as exc:
                admin.close()
                raise TransportError(
                    f"no Kafka broker answered at {', '.join(self.config.brokers)}: {exc}"
                ) from exc
            self._admin = admin
            self._producer = _ProducerThread(self.config)
            self._closed = False

    async def _ready(self) -> tuple[_Admin, _ProducerThread]:
        if self._closed:
            raise TransportError("transport is closed")
        if self._producer is None or self._admin is None:
            await self.connect()
        producer, admin = self._producer, self._admin
        assert producer is not None
        assert admin is not None
        if producer.fatal is not None or producer.ended is not None:
            # An idempotent producer can hit a fatal error (e.g. fenced sequence numbers),
            # its poller thread can fail: replace it; messages it had not confirmed were
            # reported as failed or fail naming the cause.
            if producer.ended is None:
                producer.stop(f"its producer was replaced after a fatal error ({producer.fatal})")
            self._retired = [p for p in self._retired if p.ended is None]
            self._retired.append(producer)
            producer = self._producer = _ProducerThread(self.config)
        return admin, producer

    async def aclose(self) -> None:
        """Close every subscription (committing acked offsets), flush pending
        publishes (bounded by ``publish_timeout``) and stop the producer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        subscriptions = list(self._subscriptions)
        self._subscriptions.clear()
        await asyncio.gather(*(s.aclose() for s in subscriptions), return_exceptions=True)
        producer, self._producer = self._producer, None
        retired, self._retired = self._retired, []
        # A replaced producer flushes for up to publish_timeout too: wait for it, bounded.
        bound = self.config.publish_timeout + self.config.request_timeout
        await asyncio.gather(
            *([] if producer is None else [producer.aclose()]),
            *(old.aclose(bound) for old in retired),
        )
        for future in self._topics.values():
            future.cancel()
        self._topics.clear()
        self._partitions.clear()
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()  # the last reference: librdkafka's admin threads stop now

    # -- topics ---------------------------------------------------------------------

    async def _ensure_topic(self, admin: _Admin, topic: str, partitions: int) -> int:
        """Create ``topic`` unless it exists; return its partition count (cached)."""
        future = self._topics.get(topic)
        if future is None:
            future = asyncio.ensure_future(self._create_topic(admin, topic, partitions))
            self._topics[topic] = future
        try:
            count = await asyncio.shield(future)
        except BaseException:
            if future.done() and self._topics.get(topic) is future:
                del self._topics[topic]
            raise
        self._partitions[topic] = count
        return count

    async def _create_topic(self, admin: _Admin, topic: str, partitions: int) -> int:
        config = self.config
        futures = admin.client.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=partitions,
                    replication_factor=config.replication_factor,
                    config=dict(TOPIC_CONFIG),
                )
            ],
            request_timeout=config.request_timeout,
            operation_timeout=config.request_timeout,
        )
        try:
            await asyncio.wrap_future(futures[topic])
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (
                isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
            ):
                raise TransportError(f"cannot create Kafka topic {topic!r}: {exc}") from exc
        return await asyncio.to_thread(self._wait_for_leaders, admin, topic)

    def _wait_for_leaders(self, admin: _Admin, topic: str) -> int:
        """Block until the metadata shows every partition of ``topic`` with a leader."""
        deadline = time.monotonic() + self.config.request_timeout
        problem = "no metadata"
        while time.monotonic() < deadline:
            try:
                metadata = admin.client.list_topics(
                    topic, timeout=min(5.0, self.config.request_timeout)
                )
            except KafkaException as exc:
                problem = str(exc)
            else:
                found = metadata.topics.get(topic)
                if found is not None and found.error is None and found.partitions:
                    if all(p.leader >= 0 for p in found.partitions.values()):
                        return len(found.partitions)
                    problem = "partitions without leader"
                elif found is not None and found.error is not None:
                    problem = str(found.error)
            time.sleep(0.05)
        raise TransportError(f"Kafka topic {topic!r} is not ready: {problem}")

    # -- publishing -----------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Produce ``messages`` to ``topic`` (created if missing) and await all their
        delivery reports at once.

        :raises PublishError: a delivery report failed (after librdkafka's retries,
            bounded by ``publish_timeout``; the error names how many failed, the
            first one's key and librdkafka's reason), a message was refused
            locally (too large), reports did not come by the call's deadline, or
            the producer ended first (``aclose``, replaced, its thread failed: the
            error names it); others of the batch may have been delivered.
        :raises TransportError: the topic could not be created.
        """
        if not messages:
            return
        producer = self._producer
        count = self._partitions.get(topic)
        if (
            count is None
            or producer is None
            or producer.fatal is not None
            or producer.ended is not None
            or self._closed
        ):
            admin, producer = await self._ready()
            count = await self._ensure_topic(admin, topic, self.config.partitions)
        await self._produce(producer, topic, messages, next(self._round_robin) % count)

    async def _produce(
        self, thread: _ProducerThread, topic: str, messages: Sequence[Message], keyless: int
    ) -> None:
        confirmations = _Confirmations(
            asyncio.get_running_loop(),
            len(messages),
            topic,
            self.config.publish_timeout + self.config.request_timeout,
            thread.settled,
        )
        report = confirmations.report
        produce = thread.producer.produce
        # The messages of one publish call share one headers mapping: its pairs
        # are listed (and encoded: librdkafka takes bytes as they are) once. A
        # message whose id is its key (every message ``Bus.publish`` makes: the
        # head fact's hash is both) carries no id header: receivers read the
        # key for it (``KafkaDelivery.headers``; docs/decisions.md, PROFILE.md
        # §22). Any other message's id goes in header x-factbus-message-id, the
        # last pair of a second list that each such message replaces
        # (librdkafka copies the headers during produce()); an id header in the
        # mapping (a replayed dead letter's) gives way to the message's own.
        # Arguments are passed by position (topic, value, key, partition,
        # on_delivery, callback alias, timestamp 0 = now, headers):
        # confluent-kafka parses keywords by name, ~0.4 µs a message (§17).
        shared: Mapping[str, str] | None = None
        pairs: HeaderList | None = None
        with_id: HeaderList = []
        headers: HeaderList | None
        last = 0
        thread.track(confirmations)
        try:
            for start in range(0, len(messages), _YIELD_EVERY):
                if start:
                    await asyncio.sleep(0)  # a huge batch must not hold the event loop
                    if confirmations.future.done() or thread.ended is not None:
                        raise _CutOff
                for message in messages[start : start + _YIELD_EVERY]:
                    if message.headers is not shared:
                        shared = message.headers
                        with_id = [
                            (name, value.encode())
                            for name, value in shared.items()
                            if name != HEADER_MESSAGE_ID  # the message's own id wins
                        ]
                        pairs = with_id[:] or None
                        last = len(with_id)
                        with_id.append((HEADER_MESSAGE_ID, b""))
                    key = message.key
                    message_id = message.message_id
                    if message_id == key:
                        headers = pairs
                    else:
                        with_id[last] = (HEADER_MESSAGE_ID, message_id.encode())
                        headers = with_id
                    partition = keyless if key is None else -1
                    try:
                        produce(topic, message.body, key, partition, report, None, 0, headers)
                    except BufferError:  # librdkafka's local queue is full
                        await self._produce_when_room(
                            thread,
                            confirmations,
                            (topic, message.body, key, partition, report, None, 0, headers),
                        )
                    except RuntimeError as exc:  # "Producer has been closed"
                        raise thread.cut_off(topic, exc) from exc
                    except (KafkaException, ValueError, TypeError) as exc:
                        raise PublishError(f"kafka refused a message for {topic!r}: {exc}") from exc
        except _CutOff:
            pass  # failed meanwhile, or the producer ended: watch() fails it naming why
        except BaseException:
            confirmations.future.cancel()  # nobody awaits it: the poller forgets it
            raise
        thread.watch(confirmations)  # its deadline starts now that it is handed over
        await confirmations.future

    @staticmethod
    async def _produce_when_room(
        thread: _ProducerThread, call: _Confirmations, arguments: tuple[Any, ...]
    ) -> None:
        """``produce`` one message of ``call`` once librdkafka's local queue has
        room (the poller drains it), unless the call is failed or the producer
        ends meanwhile (:class:`_CutOff`)."""
        produce = thread.producer.produce
        while True:
            await asyncio.sleep(0.005)
            if call.future.done() or thread.ended is not None:
                raise _CutOff
            try:
                produce(*arguments)
                return
            except BufferError:
                continue
            except RuntimeError as exc:  # "Producer has been closed"
                raise thread.cut_off(arguments[0], exc) from exc
            except (KafkaException, ValueError, TypeError) as exc:
                raise PublishError(f"kafka refused a message for {arguments[0]!r}: {exc}") from exc

    # -- subscribing ----------------------------------------------------------------

    async def subscribe(self, topic: str, group: str) -> KafkaSubscription:
        """Join Kafka consumer group ``group`` on ``topic`` (created if missing); return
        once the first partition assignment arrived (at most ``join_timeout``).

        A new group starts at the earliest offset (it reads the topic's history);
        an existing one at its committed offsets. When a partition's earliest
        offset is not 0 (records were deleted: finite retention or
        ``delete_records`` on a topic made elsewhere), a warning ``kafka topic
        lost history`` is logged: a late node cannot converge from this topic
        alone and should catch up from a peer (``factbus catch-up``).

        :raises TransportError: the topic or the consumer could not be set up.
        """
        admin, _ = await self._ready()
        count = await self._ensure_topic(admin, topic, self.config.partitions)
        await self._check_history(admin, topic, group, count)
        subscription = KafkaSubscription(
            self.config, topic, group, on_close=self._subscriptions.discard, logger=librdkafka_log
        )
        self._subscriptions.add(subscription)
        try:
            await subscription.start()
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def _check_history(self, admin: _Admin, topic: str, group: str, count: int) -> None:
        """Log a warning when ``topic`` no longer starts at offset 0 (see :meth:`subscribe`)."""
        partitions = [TopicPartition(topic, p) for p in range(count)]
        try:
            earliest = await self._offsets(admin, partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        except KafkaException as exc:  # advisory only: never fails a subscribe
            log.debug("kafka earliest offsets unknown", topic=topic, error=str(exc))
            return
        lost = {p: o for p, o in sorted(earliest.items()) if o > 0}
        if lost:
            log.warning(
                "kafka topic lost history",
                topic=topic,
                group=group,
                earliest_offsets=lost,
                hint="records before these offsets were deleted (finite retention or "
                "delete_records); a new node misses them: catch up from a peer",
            )

    # -- dead letters ---------------------------------------------------------------

    async def dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], reason: str
    ) -> None:
        """Produce ``body`` to ``<topic>.dead-letter`` with ``reason`` in header
        ``x-factbus-dead-letter-reason``; return once confirmed.

        :raises PublishError: the broker did not confirm it.
        """
        admin, producer = await self._ready()
        target = dead_letter_topic(topic)
        await self._ensure_topic(admin, target, 1)
        letter_headers = dead_letter_headers(headers, topic, reason)
        message_id = headers.get(HEADER_MESSAGE_ID) or uuid.uuid4().hex
        letter_headers.pop(HEADER_MESSAGE_ID, None)
        await self._produce(producer, target, [Message(body, message_id, None, letter_headers)], 0)

    async def read_dead_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic``, oldest first, read from the log
        start with a throwaway consumer that never commits (nothing is removed).

        :raises TransportError: the topic could not be read within ``request_timeout``.
        """
        if limit <= 0:
            return []
        await self._ready()
        return await asyncio.to_thread(self._read_letters, dead_letter_topic(topic), limit)

    def _read_letters(self, topic: str, limit: int) -> list[DeadLetter]:
        config = self.config
        settings = config.reader_settings()
        settings["logger"] = librdkafka_log
        reader = Consumer(settings)
        try:
            metadata = reader.list_topics(topic, timeout=config.request_timeout)
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                return []
            ends: dict[int, int] = {}
            starts: list[TopicPartition] = []
            for number in found.partitions:
                low, high = reader.get_watermark_offsets(
                    TopicPartition(topic, number), timeout=config.request_timeout
                )
                if high > low:
                    ends[number] = high
                    starts.append(TopicPartition(topic, number, low))
            if not starts:
                return []
            reader.assign(starts)
            taken: dict[int, int] = dict.fromkeys(ends, 0)
            records: list[KafkaMessage] = []
            deadline = time.monotonic() + config.request_timeout
            while ends:
                if time.monotonic() > deadline:
                    raise TransportError(f"reading dead letters of {topic!r} timed out")
                batch = reader.consume(min(limit, 1000), 0.2)
                for record in batch:
                    if record.error() is not None:
                        continue
                    number, offset = record.partition() or 0, record.offset() or 0
                    end = ends.get(number)
                    if end is None or offset >= end:
                        continue
                    records.append(record)
                    taken[number] += 1
                    if offset + 1 >= end or taken[number] >= limit:
                        del ends[number]
                if not batch and ends:
                    # Gaps (control records) may hide the last offset: ask the position.
                    for tp in reader.position([TopicPartition(topic, n) for n in ends]):
                        if tp.offset >= ends[tp.partition]:
                            del ends[tp.partition]
        except KafkaException as exc:
            raise TransportError(f"cannot read dead letters of {topic!r}: {exc}") from exc
        finally:
            reader.close()
        records.sort(key=lambda r: (r.timestamp()[1], r.partition() or 0, r.offset() or 0))
        return [
            DeadLetter(record.value() or b"", decode_headers(record.headers()))
            for record in records[:limit]
        ]

    async def purge_dead_letters(self, topic: str) -> int:
        """Delete every record of ``<topic>.dead-letter`` (up to its high watermark,
        with ``delete_records``); return how many were removed.

        :raises TransportError: the broker refused.
        """
        admin, _ = await self._ready()
        target = dead_letter_topic(topic)
        metadata = await asyncio.to_thread(
            admin.client.list_topics, target, timeout=self.config.request_timeout
        )
        found = metadata.topics.get(target)
        if found is None or found.error is not None or not found.partitions:
            return 0
        partitions = [TopicPartition(target, n) for n in found.partitions]
        try:
            lows = await self._offsets(admin, partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
            highs = await self._offsets(admin, partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
            doomed = [
                TopicPartition(target, n, highs[n]) for n in highs if highs[n] > lows.get(n, 0)
            ]
            if not doomed:
                return 0
            futures = admin.client.delete_records(
                doomed,
                request_timeout=self.config.request_timeout,
                operation_timeout=self.config.request_timeout,
            )
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))
        except KafkaException as exc:
            raise TransportError(f"cannot purge dead letters of {topic!r}: {exc}") from exc
        return sum(tp.offset - lows.get(tp.partition, 0) for tp in doomed)

    async def remove(self, topic: str, groups: Sequence[str]) -> list[str]:
        """Delete ``topic``, ``<topic>.dead-letter`` and consumer groups ``groups``
        (:mod:`factbus_kafka.removal`; see
        :class:`~factbus.transport.base.RemovesTopics`)."""
        admin, _ = await self._ready()
        for name in (topic, dead_letter_topic(topic)):
            self._partitions.pop(name, None)
            future = self._topics.pop(name, None)
            if future is not None:
                future.cancel()
        done = await asyncio.to_thread(
            removal.delete,
            admin.client,
            [topic, dead_letter_topic(topic)],
            groups,
            self.config.request_timeout,
        )
        return done.left

    async def lag(self, topic: str, group: str) -> dict[str, int]:
        """Per partition (``"0"``, ``"1"``...): high watermark minus ``group``'s
        committed offset (minus the log start where the group committed nothing
        yet, since a new group starts at the earliest offset); ``{}`` when the
        topic does not exist. Asks the admin API only (no consumer joins).

        :raises TransportError: the broker refused or did not answer in time.
        """
        admin, _ = await self._ready()
        try:
            metadata = await asyncio.to_thread(
                admin.client.list_topics, topic, timeout=self.config.request_timeout
            )
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                return {}
            partitions = [TopicPartition(topic, n) for n in found.partitions]
            lows = await self._offsets(admin, partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
            highs = await self._offsets(admin, partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
            futures = admin.client.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, partitions)],
                request_timeout=self.config.request_timeout,
            )
            answer = await asyncio.wrap_future(futures[group])
        except KafkaException as exc:
            raise TransportError(
                f"cannot measure the lag of {group!r} on {topic!r}: {exc}"
            ) from exc
        committed = {tp.partition: tp.offset for tp in answer.topic_partitions or []}
        lag: dict[str, int] = {}
        for number, high in sorted(highs.items()):
            position = committed.get(number, -1)
            if position < 0:  # nothing committed: the group starts at the log start
                position = lows.get(number, 0)
            lag[str(number)] = max(high - position, 0)
        return lag

    async def _offsets(
        self, admin: _Admin, partitions: list[TopicPartition], spec: OffsetSpec
    ) -> dict[int, int]:
        futures = admin.client.list_offsets(
            dict.fromkeys(partitions, spec), request_timeout=self.config.request_timeout
        )
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))
            return {
                tp.partition: result.offset for tp, result in zip(futures, results, strict=True)
            }
        finally:
            # A failed future holds the exception whose traceback holds this frame:
            # drop the futures so that no reference cycle outlives the call.
            del futures


if TYPE_CHECKING:

    def _implements_the_protocol(transport: KafkaTransport) -> Transport:
        return transport  # mypy checks KafkaTransport against the Transport protocol
