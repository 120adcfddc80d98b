"""Baselines: the raw broker client moving the same envelope bodies, for comparison.

One producer and one consumer, the same message count, the same broker as the
factbus run: confluent-kafka for ``kafka://``, aio-pika with publisher
confirms for ``amqp://``, kombu for ``kombu+<transport>://`` and a bare
``asyncio.Queue`` hand-off for ``memory://``.

Each adapter package ships its own baseline (``factbus_kafka.baseline``, ...)
and registers it under the entry-point group ``factbus.baselines``, named by
URL scheme like its transport (:mod:`factbus.plugins`): the core never imports
an adapter, and a third-party adapter adds its baseline the same way. A
baseline class takes ``(url, destination)``. Each baseline uses the client the
way its documentation shows (no factbus code on the hot path), with the same
durability the factbus adapter asks for (persistent messages, confirms, acks).

Contract of a :class:`Baseline`: ``setup`` creates a fresh destination and
readies the consumer; ``consume`` is started before ``produce`` (end to end)
or after it (draining a backlog: ``setup(subscribe=False)``, ``produce``,
``subscribe``, ``consume``) and returns the time the last message arrived;
``produce`` may run in another process on another instance made with the
same URL and destination (except ``memory://``, which is in-process by
nature); ``teardown`` removes what ``setup`` and the consumer created (Kafka: the
consumer group too), through the adapter's own removal module, as the
transport's ``remove`` does for factbus's topics.
A drain is timed from ``subscribe``'s return to ``consume``'s result, as the
bench times factbus's drain from ``Bus.start()`` to the last commit (docs/
decisions.md, "Drain measurement"): ``subscribe`` waits for what the broker
needs before it delivers (Kafka: the partition assignment) and counts nothing,
``consume`` counts every message of the backlog (also any received while
``subscribe`` waited), and the consumer prefetches no more than the factbus
adapter's consumer does (nor than the client's defaults). amqp and kombu
register their consumer inside ``consume`` (one round trip, inside the window).
Times are ``time.perf_counter()`` values (CLOCK_MONOTONIC on Linux: comparable
across processes of one machine).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from factbus import plugins
from factbus.errors import ConfigError
from factbus.urls import redact


class Baseline(Protocol):
    """A raw client's producer and consumer on one destination (see the module docstring)."""

    client: str
    """What moves the messages, e.g. ``confluent-kafka 2.4 (acks=all)``."""
    received: int
    """Messages consumed so far (read from any thread for progress)."""
    first_at: float
    """When the first message arrived (0.0: none yet)."""

    async def setup(self, subscribe: bool = True) -> None:
        """Create the destination and, with ``subscribe``, ready the consumer."""

    async def subscribe(self) -> None:
        """Ready the consumer (subscribed, assigned) if ``setup`` did not."""

    async def produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        """Publish ``bodies[i]`` (id/key ``keys[i]``) for every ``i`` of ``chunks``,
        in order, and return (start, end) once the broker confirmed every one."""
        ...

    # Optional: ``produce_cpu_s: float | None``, CPU seconds of the producing
    # process over ``produce``'s own (start, end) window, set by ``produce``;
    # without it the bench counts the whole call (client set-up included).

    async def consume(self, count: int, timeout: float) -> float:
        """Receive (and ack) ``count`` messages; return when the last arrived.

        :raises TimeoutError: fewer arrived within ``timeout`` seconds.
        """
        ...

    async def teardown(self, remove: bool = True) -> list[str]:
        """Close clients and, with ``remove``, delete from the broker everything
        ``setup`` and the consumer made there (the destination, its queue or
        consumer group); a new instance on the same URL and destination, never set
        up, removes the same (what is already gone is no error). Idempotent; never
        raises: returns a line per object it could not remove (``[]``: all gone)."""
        ...


class Arrivals:
    """The consumer-side counters of a :class:`Baseline`, kept in one way by
    every baseline: :attr:`received` and :attr:`first_at` as the protocol
    describes them, moved only by :meth:`arrived`. Base class of the shipped
    baselines; written by the consuming thread, read from any."""

    received: int = 0
    first_at: float = 0.0

    def arrived(self) -> float:
        """Count one message consumed now; the first one sets :attr:`first_at`.
        Returns now (``time.perf_counter()``)."""
        now = time.perf_counter()
        if not self.received:
            self.first_at = now
        self.received += 1
        return now


GROUP = "factbus.baselines"

# Used when factbus runs from a source tree without installed entry points.
_BUILTIN = {
    "memory": ("factbus.bench.baseline.memory:MemoryBaseline", None),
    "amqp": ("factbus_amqp.baseline:AmqpBaseline", "amqp"),
    "amqps": ("factbus_amqp.baseline:AmqpBaseline", "amqp"),
    "kafka": ("factbus_kafka.baseline:KafkaBaseline", "kafka"),
    "kombu": ("factbus_kombu.baseline:KombuBaseline", "kombu"),
}


def baseline_for(url: str, destination: str) -> Baseline:
    """The baseline registered for ``url``'s transport, on a new ``destination``
    (topic/queue name).

    :raises ConfigError: no baseline for this transport.
    :raises MissingDriver: the raw client is not installed.
    """
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if not scheme:
        raise ConfigError(f"transport URL {redact(url)!r} has no scheme")
    baseline: Baseline = plugins.load(GROUP, scheme, _BUILTIN, what="raw-client baseline")(
        url, destination
    )
    return baseline


__all__ = ["Arrivals", "Baseline", "baseline_for"]
