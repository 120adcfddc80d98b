"""Prometheus metrics of buses (the optional extra ``factbus[metrics]``).

One :class:`Metrics` object owns a ``prometheus_client`` registry; every bus
built with ``Bus(metrics=metrics)`` reports into it under labels ``topic`` and
``node``. Expose it with :meth:`Metrics.serve` (a thread serving
``/metrics``; ``factbus worker --metrics-port``), :func:`asgi_app` (mount it in
any ASGI server, as the sidecar does) or :meth:`Metrics.text`.

Exported names (kept stable; deploy/grafana/ and ``factbus top`` read them):

=====================================  =========  ================================
name                                   type       labels (besides topic, node)
=====================================  =========  ================================
factbus_facts_received_total           counter    facts decoded from deliveries
factbus_facts_handled_total            counter
factbus_facts_duplicates_total         counter
factbus_facts_parked_total             counter
factbus_facts_released_total           counter
factbus_facts_rejected_total           counter    ``reason`` (the envelope error code)
factbus_facts_failed_total             counter    handler failed on every attempt
factbus_publish_record_failures_total  counter    published refs not recorded (retried)
factbus_facts_waiting                  gauge      parked right now
factbus_consumer_lag                   gauge      ``partition`` (Kafka) or ``queue``
factbus_handler_duration_seconds       histogram  ``fact_type``
factbus_step_duration_seconds          histogram
factbus_end_to_end_latency_seconds     histogram  publish-time header -> handled
=====================================  =========  ================================

Cost: everything is kept in plain Python numbers by the bus's event-loop
thread and turned into Prometheus samples only when scraped. The counters and
``waiting`` are the pipeline's own :class:`~factbus.PipelineStats` (nothing
extra per fact). Per handled fact the dispatcher reads the clock twice and
appends to a list; once per step those timings go into the histograms
(:class:`Histogram`: one bisect each), with the end-to-end latency of each
envelope's head fact. ``factbus_facts_rejected_total`` counts envelopes (one
per dead-lettered delivery), since a rejected envelope's facts are never
trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from factbus.errors import ConfigError
from factbus.headers import HEADER_PUBLISHED_AT

AVAILABLE: bool
"""True when ``prometheus-client`` is importable."""
try:
    import prometheus_client
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by installs without the extra
    AVAILABLE = False
    Collector = object  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from factbus.config import Settings
    from factbus.pipeline import PipelineStats
    from factbus.transport.base import Transport


class MeteredBus(Protocol):
    """What the metrics read of a bus (:class:`factbus.bus.Bus` is one): its
    settings (topic, node, group), its pipeline's counters and its transport
    (for ``lag()``, when it has one)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def stats(self) -> PipelineStats: ...
    @property
    def transport(self) -> Transport: ...


def _one_two_five(first: int, last: int) -> tuple[float, ...]:
    """Histogram bounds 1, 2.5 and 5 times each power of ten from ``10**first``
    to ``10**last``, ascending: ``_one_two_five(-1, 0)`` is ``(0.1, 0.25, 0.5,
    1.0, 2.5, 5.0)``. Each bound is the float its decimal text reads as (so a
    bucket's ``le`` label is that text, e.g. ``0.00025``, never a rounding
    artefact)."""
    return tuple(float(f"{m}e{e}") for e in range(first, last + 1) for m in ("1", "2.5", "5"))


HANDLER_BUCKETS = (0.00005, *_one_two_five(-4, 0), 10.0)
"""Seconds: handler and pipeline-step durations, 50 µs to 10 s."""
LATENCY_BUCKETS = (*_one_two_five(-3, 0), 10.0, 30.0, 60.0, 300.0)
"""Seconds: publish-to-handled latency, 1 ms to 5 min."""

# (metric name without _total, PipelineStats attribute, help)
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("factbus_facts_received", "facts_received", "Facts decoded from received deliveries."),
    ("factbus_facts_handled", "handled", "Facts handed to their handlers and recorded."),
    ("factbus_facts_duplicates", "duplicates", "Facts skipped because already handled."),
    ("factbus_facts_parked", "parked", "Facts parked to wait for predecessors."),
    ("factbus_facts_released", "released", "Parked facts released once predecessors arrived."),
    ("factbus_facts_failed", "failed", "Facts dead-lettered: a handler failed on every attempt."),
    (
        "factbus_publish_record_failures",
        "publish_record_failures",
        "Failed attempts to record confirmed publishes' refs in the store (retried).",
    ),
)
REJECTED = "factbus_facts_rejected"
WAITING = "factbus_facts_waiting"
LAG = "factbus_consumer_lag"
HANDLER_DURATION = "factbus_handler_duration_seconds"
STEP_DURATION = "factbus_step_duration_seconds"
END_TO_END = "factbus_end_to_end_latency_seconds"

EXPORTED: frozenset[str] = frozenset(
    [f"{name}_total" for name, _, _ in COUNTERS]
    + [f"{REJECTED}_total", WAITING, LAG]
    + [
        f"{histogram}_{suffix}"
        for histogram in (HANDLER_DURATION, STEP_DURATION, END_TO_END)
        for suffix in ("bucket", "sum", "count")
    ]
)
"""Every sample name the registry exports (what dashboards may query)."""


def _require() -> None:
    if not AVAILABLE:
        raise ConfigError("factbus metrics need prometheus-client: pip install 'factbus[metrics]'")


class Histogram:
    """A cumulative histogram kept in plain Python numbers, observed on the bus's
    event-loop thread without a lock (a scrape from another thread may see one
    observation half-applied; the next scrape is exact)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_all(self, values: Sequence[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self.sum += sum(values)
        self.count += len(values)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ``+Inf`` last, as Prometheus wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class Metrics:
    """A Prometheus registry that buses report into (see the module docstring).

    ``lag_interval``: seconds between two broker lag queries of each bus (the
    lag gauge is refreshed by the bus, not at scrape time, so a scrape never
    waits on a broker).

    :raises ConfigError: prometheus-client is not installed.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, lag_interval: float = 5.0
    ) -> None:
        _require()
        self.registry: CollectorRegistry = registry or CollectorRegistry()
        self.lag_interval = lag_interval
        self._buses: list[BusMetrics] = []
        self._lock = threading.Lock()
        self.registry.register(_StatsCollector(self))

    def bind(self, bus: MeteredBus) -> BusMetrics:
        """Report ``bus`` (its node and topic as they are now) into this registry."""
        bound = BusMetrics(bus.settings.topic, bus.settings.node_name, bus, self.lag_interval)
        with self._lock:
            self._buses.append(bound)
        return bound

    def unbind(self, bound: BusMetrics) -> None:
        """Stop exporting ``bound`` (a closed bus)."""
        with self._lock:
            if bound in self._buses:
                self._buses.remove(bound)

    def buses(self) -> list[BusMetrics]:
        with self._lock:
            return list(self._buses)

    def text(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return bytes(prometheus_client.generate_latest(self.registry))

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve ``GET /metrics`` on ``addr:port`` from a daemon thread (``port=0``:
        any free port, see :attr:`MetricsServer.port`).

        :raises OSError: the port cannot be bound.
        """
        server, thread = prometheus_client.start_http_server(port, addr, self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    """A running exporter thread; :meth:`close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def asgi_app(metrics: Metrics) -> Callable[..., Any]:
    """An ASGI application answering with ``metrics``' registry (mount it at
    ``/metrics`` in Starlette: ``Mount("/metrics", app=asgi_app(metrics))``)."""
    return prometheus_client.make_asgi_app(metrics.registry)


class BusMetrics:
    """One bus's numbers beyond its :class:`~factbus.PipelineStats`: rejections by
    reason, histograms, lag. Written on the bus's event-loop thread only."""

    def __init__(self, topic: str, node: str, bus: MeteredBus | None, lag_interval: float) -> None:
        self.topic = topic
        self.node = node
        self._bus = bus
        self.lag_interval = lag_interval
        self.lag: dict[str, int] = {}
        """Last broker lag per partition (or ``queue``), refreshed by the bus."""
        self.rejected: dict[str, int] = {}
        """Envelopes rejected, by reason code."""
        self.handler_duration: dict[str, Histogram] = {}
        """Per fact type."""
        self.step_duration = Histogram(HANDLER_BUCKETS)
        self.end_to_end = Histogram(LATENCY_BUCKETS)

    @property
    def stats(self) -> PipelineStats | None:
        return self._bus.stats if self._bus is not None else None

    def reject(self, code: str) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1

    def handler_histogram(self, fact_type: str) -> Histogram:
        histogram = self.handler_duration.get(fact_type)
        if histogram is None:
            histogram = self.handler_duration[fact_type] = Histogram(HANDLER_BUCKETS)
        return histogram

    async def follow_lag(self, bus: MeteredBus, stopping: asyncio.Event) -> None:
        """Refresh :attr:`lag` from the transport's ``lag()`` every ``lag_interval``
        seconds until ``stopping`` is set (a transport without it reports none)."""
        lag = getattr(bus.transport, "lag", None)
        if lag is None:
            return
        group = bus.settings.subscription_group
        while not stopping.is_set():
            # On failure the next round tries again; a scrape shows the last value.
            with contextlib.suppress(Exception):
                self.lag = dict(await lag(self.topic, group))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.lag_interval)


def published_at(headers: Mapping[str, str]) -> float | None:
    """The publish-time header as epoch seconds, or None when absent or bad."""
    raw = headers.get(HEADER_PUBLISHED_AT)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class _StatsCollector(Collector):
    """Reads each bound bus's counters when the registry is scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families([]))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._metrics.buses()))

    def _families(self, buses: Sequence[BusMetrics]) -> Iterable[Metric]:
        labels = ["topic", "node"]
        live = [(bound, stats) for bound in buses if (stats := bound.stats) is not None]
        for name, attribute, text in COUNTERS:
            yield _filled(
                CounterMetricFamily(name, text, labels=labels),
                (([b.topic, b.node], getattr(stats, attribute)) for b, stats in live),
            )
        yield _filled(
            GaugeMetricFamily(WAITING, "Facts parked right now.", labels=labels),
            (([b.topic, b.node], stats.waiting) for b, stats in live),
        )
        lag_text = (
            "Messages of the node's subscription not consumed yet (Kafka: high "
            "watermark minus committed offset per partition; queues: queue depth)."
        )
        yield _filled(
            GaugeMetricFamily(LAG, lag_text, labels=[*labels, "partition"]),
            _keyed(buses, lambda b: b.lag.items()),
        )
        rejected_text = "Envelopes dead-lettered on receipt, by reason code."
        yield _filled(
            CounterMetricFamily(REJECTED, rejected_text, labels=[*labels, "reason"]),
            _keyed(buses, lambda b: sorted(b.rejected.items())),
        )
        handler_text = (
            "Seconds spent in a fact's handlers (every handler of its type, with retries)."
        )
        yield _histograms(
            HistogramMetricFamily(HANDLER_DURATION, handler_text, labels=[*labels, "fact_type"]),
            _keyed(buses, lambda b: sorted(b.handler_duration.items())),
        )
        per_bus: list[tuple[str, str, Callable[[BusMetrics], Histogram]]] = [
            (
                STEP_DURATION,
                "Seconds per pipeline step (verify, dedup, order, handle, record, ack a batch).",
                lambda b: b.step_duration,
            ),
            (
                END_TO_END,
                "Seconds from the publisher's publish-time header to the fact being handled "
                "(facts handled in the step that received them).",
                lambda b: b.end_to_end,
            ),
        ]
        for name, text, pick in per_bus:
            yield _histograms(
                HistogramMetricFamily(name, text, labels=labels),
                (([b.topic, b.node], pick(b)) for b in buses),
            )


V = TypeVar("V")


def _keyed(
    buses: Iterable[BusMetrics], items: Callable[[BusMetrics], Iterable[tuple[str, V]]]
) -> Iterator[tuple[list[str], V]]:
    """``([topic, node, key], value)`` for each bus and each ``(key, value)`` of
    ``items(bus)``, in that order: the samples of a family with one more label."""
    for bound in buses:
        for key, value in items(bound):
            yield [bound.topic, bound.node, key], value


def _filled(
    family: CounterMetricFamily | GaugeMetricFamily, samples: Iterable[tuple[list[str], float]]
) -> Metric:
    """``family`` with one sample per ``(label values, value)`` of ``samples``, in order."""
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _histograms(
    family: HistogramMetricFamily, samples: Iterable[tuple[list[str], Histogram]]
) -> Metric:
    """``family`` with one histogram per ``(label values, histogram)`` of ``samples``."""
    for values, histogram in samples:
        family.add_metric(values, histogram.cumulative(), histogram.sum)
    return family
