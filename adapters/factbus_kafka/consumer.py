"""The consumer thread of a Kafka subscription: the only code that touches its ``Consumer``.

librdkafka's consumer is not safe to share between threads, and it must be
polled continuously to take part in rebalances (a member that stops polling
holds up every join of its group). So each subscription runs a dedicated
thread (:class:`ConsumerThread`) that alone touches its ``Consumer``: it
consumes (waits up to ``poll_interval`` for one message, then takes what
librdkafka has queued, up to ``fetch_batch``; never waits for a full batch),
serves rebalance callbacks, stores acknowledged offsets, seeks for nacks
(:meth:`~factbus_kafka.offsets.OffsetBook._apply`), holds back when the buffer
is full and finally commits and closes. Batches reach the event loop with one
``call_soon_threadsafe`` each (:meth:`ConsumerThread._call`), as librdkafka's
records, which the thread first takes out of the cyclic garbage collector's
lists when the native helper is in use
(:data:`~factbus_kafka._driver.untrack_records`: a record cannot be part of a
reference cycle, and a backlog of tracked records was most of what full
collections walked, benchmarks/studies/PROFILE.md §25-§26).

Back-pressure: the subscription holds at most ``max_buffered`` received
records (in its buffer or on their way to it). When full, the thread stops
taking records from librdkafka and waits (up to ``heartbeat_interval``) for
``next_batch`` to make room for a ``fetch_batch``; librdkafka's own queue,
bounded by ``prefetch_kbytes``, then fills and its fetching stops. Only when
the buffer stays full that long are the partitions paused, so that the thread
can go on serving rebalances: a pause drops what librdkafka had prefetched,
which it fetches again on resume, so pausing at every full buffer (as this
did) fetched most of a backlog twice. A rebalance that comes while the thread
waits is served up to ``heartbeat_interval`` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any

import structlog

from factbus_kafka._driver import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
    untrack_records,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from factbus_kafka.config import KafkaConfig

log = structlog.get_logger("factbus.kafka")


class ConsumerThread:
    """The consumer thread of a :class:`KafkaSubscription` (see the module
    docstring); a base of that class only, which owns the state below and the
    event-loop callbacks the thread schedules."""

    topic: str
    group: str
    pauses: int
    _config: KafkaConfig
    _consumer: Consumer
    _loop: asyncio.AbstractEventLoop
    _stop: threading.Event
    _room: threading.Event
    _limit: int
    _low: int
    _handed: int
    _owned: set[int]

    if TYPE_CHECKING:  # defined by OffsetBook and KafkaSubscription

        def _apply(self, consumer: Consumer) -> None: ...
        def _commit(self, consumer: Consumer) -> None: ...
        def _occupancy(self) -> int: ...
        def _receive(self, messages: list[Message]) -> None: ...
        def _assigned(self, numbers: list[int]) -> None: ...
        def _revoked(self, numbers: list[int]) -> None: ...
        def _failed(self, error: BaseException) -> None: ...
        def _ended(self) -> None: ...

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        """From the thread: run ``callback`` on the event loop (dropped once it closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        consumer = self._consumer
        config = self._config
        untrack = untrack_records
        limit, low = self._limit, self._low
        paused = False
        try:
            consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._stop.is_set():
                try:
                    self._apply(consumer)
                    if not paused and self._occupancy() >= limit and not self._wait_for_room():
                        # Still full: pause, so that consume() keeps serving rebalances.
                        consumer.pause(consumer.assignment())
                        paused = True
                        self.pauses += 1
                    elif paused and self._occupancy() <= low:
                        consumer.resume(consumer.assignment())
                        paused = False
                    if self._stop.is_set():
                        break
                    # librdkafka's batch consume waits until it has fetch_batch
                    # messages or the timeout passes, so below fetch_batch per
                    # poll_interval every message would wait up to poll_interval.
                    # Wait for the first message only, then take what is queued.
                    # Never more than the buffer has room for (paused: 0, but a
                    # consume() call is what serves rebalances).
                    room = min(config.fetch_batch, max(limit - self._occupancy(), 1))
                    messages = consumer.consume(1, config.poll_interval)
                    if messages and room > 1:
                        messages.extend(consumer.consume(room - 1, 0))
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    if not isinstance(error, KafkaError) or error.fatal():
                        raise
                    log.warning("kafka consumer error", topic=self.topic, error=str(exc))
                    self._stop.wait(config.poll_interval)  # librdkafka recovers by itself
                    continue
                if messages:
                    if untrack is not None:
                        # Out of the collector's lists before they wait in the
                        # buffer (benchmarks/studies/PROFILE.md §25, §26).
                        untrack(messages)
                    self._handed += len(messages)
                    self._call(self._receive, messages)
        except BaseException as exc:  # surfaced by next_batch
            self._call(self._failed, exc)
        finally:
            self._shut_down(consumer)
            self._call(self._ended)

    def _wait_for_room(self) -> bool:
        """Thread: wait (at most ``heartbeat_interval``) until the event loop has
        made room (see the module docstring); whether it did."""
        self._room.clear()
        if self._occupancy() <= self._low:  # made room meanwhile
            return True
        self._room.wait(self._config.heartbeat_interval)
        return self._occupancy() <= self._low

    def _shut_down(self, consumer: Consumer) -> None:
        try:
            self._apply(consumer)
            self._commit(consumer)
            consumer.close()
        except Exception as exc:
            log.warning("closing the kafka consumer failed", topic=self.topic, error=str(exc))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._owned.update(numbers)
        self._call(self._assigned, numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        # Commit what was acked before another member takes these partitions.
        self._apply(consumer)
        if numbers:
            self._commit(consumer)
        self._owned.difference_update(numbers)
        self._call(self._revoked, numbers)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._owned.difference_update(numbers)
        self._call(self._revoked, numbers)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._call(self._failed, KafkaException(error))
        else:
            log.debug("kafka consumer connection event", topic=self.topic, error=str(error))
