"""One benchmark run: the baseline, then factbus's warm-up, peak, half-load and drain phases.

Order of a run (one consumer process, this one):

1. **baseline**: the raw client (:mod:`factbus.bench.baseline`) moves the peak
   workload's envelope bodies over a fresh destination on the same broker, one
   producer and one consumer; messages/s from the first publish to the last
   receipt.
2. **warm-up**: a consuming :class:`~factbus.Bus` (store: ``--store``, by
   default SQLite in a temporary directory; a trivial sync handler per fact
   type) handles a smaller workload, so connections, caches and the store are
   warm.
3. **peak**: the publishers send the workload as fast as they can; the phase
   ends when every distinct fact is handled and every message was taken (its
   step committed). Throughput is messages (and distinct facts) over that time.
4. **half load**: a new workload of the same size, publishing paced at half of
   the peak's end-to-end rate message by message (each message published when
   it is due, see :mod:`factbus.bench.publisher`); its latency percentiles are
   the latency at half of peak load.
5. **drain**: the bus closes; a new workload is published as a backlog; a new
   bus (same node, store and group) drains it. Then the raw consumer drains a
   backlog of the same bodies. Consumer capacity alone, publishers idle.
   Both drains are timed the same way (docs/decisions.md, "Drain
   measurement"): from the moment the consumer is subscribed (Kafka: has its
   partition assignment; factbus: ``Bus.start()`` returned) to the last
   message handled (factbus: the last step's commit; raw: the last receipt),
   every message counted, so joining a group is left out and fetching the
   backlog is not. The consuming process's CPU time over the same window
   gives ``drain_cpu_us_per_msg``.
6. **floor**: the hand-written receive loop of :mod:`factbus.bench.floor`
   (in-process, no store) over the drain's bodies, and the memory a received
   fact takes (tracemalloc); ``floor_ratio = drain_per_s / floor_per_s`` (wall
   time: drain and floor run at different moments of a shared machine) and
   ``floor_cpu_ratio = floor_cpu_us_per_msg / drain_cpu_us_per_msg`` (CPU
   time: far steadier).

The handler stamps ``perf_counter()`` per fact (by its ``n`` field); the
publishers stamp each publish call (each fact: the call that carries it); latency
is the difference, per distinct fact. Resident memory is sampled every 0.1 s while the bus runs.

Concurrency: everything runs on the caller's event loop; publisher processes
(``publisher_mode="process"``) are spawned and reaped by the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from factbus import envelope
from factbus.bench.baseline import Baseline, baseline_for
from factbus.bench.cleanup import BenchCleanupError, Made, timed_remove
from factbus.bench.floor import floor_measure, memory_per_fact
from factbus.bench.publisher import (
    PublisherProcesses,
    Publishers,
    PublisherTasks,
    PublishJob,
    merge_stamps,
)
from factbus.bench.result import BenchResult, HalfLoad, Latency, latencies, machine
from factbus.bench.workload import Shape, WorkloadSpec, build_workload
from factbus.bus import Bus
from factbus.errors import ConfigError, FactbusError, TransportError
from factbus.fact import Fact
from factbus.gc_freeze import freeze_after_start
from factbus.store import open_store
from factbus.transport import open_transport
from factbus.urls import redact

T = TypeVar("T")
log = structlog.get_logger("factbus.bench")

FACT_TYPES = ("Scenario.Independent", "Scenario.Chains", "Scenario.FanIn")
"""The fact types :func:`~factbus.testing.scenario.random_dag` makes."""

SAMPLE_INTERVAL = 0.1

LATE_JOIN_S = 1.0
"""A drain whose first fact is handled this long after ``Bus.start()`` returned
is timed from that first fact instead: ``Bus.start()`` gave up waiting for the
assignment (Kafka's ``join_timeout``) and the join would count (see
:meth:`_Run._drain`)."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure (the ``factbus bench`` options)."""

    transport: str = ""
    """Transport URL; empty: a fresh ``memory://`` namespace."""
    store: str = ""
    """Store URL of the consuming bus; empty: ``sqlite:///<tmpdir>/bench.db``."""
    facts: int = 20_000
    payload: int = 100
    publishers: int = 1
    publisher_mode: str = "auto"
    """``task``, ``process`` or ``auto`` (processes except on ``memory://``)."""
    shape: Shape = "independent"
    duplicates: float = 0.0
    reorder: bool = False
    batch_size: int = 512
    publish_batch: int = 100
    publish_inflight: int = 1
    """Publish calls each publisher keeps in flight in the warm-up, the peak and
    the drain's backlog (``--publish-inflight``; the half-load phase paces its
    own). 1: each call awaits its confirms before the next, as before. Above 1
    only for workloads with no causal publish order to keep: ``shape``
    ``independent`` or ``reorder`` (see :mod:`factbus.bench.publisher`)."""
    warmup: int = 2_000
    pack: int = 1
    """Facts per envelope the publishers pack (``Bus(pack=N)``); 1: one per message."""
    seed: int = 1
    baseline: bool = True
    half_load: bool = True
    drain: bool = True
    """Also measure a new bus draining a backlog (consumer capacity, no publishers)."""
    timeout: float = 300.0
    """Seconds each phase may take."""
    profile: str = ""
    """Profile the peak phase to this path: ``.prof`` (cProfile, wall time),
    ``.cpu.prof`` (cProfile, the event-loop thread's CPU time), ``.html`` or
    anything else (pyinstrument, wall time)."""

    gc_freeze: bool = False
    """Freeze the collector's start-up objects (:func:`~factbus.gc_freeze.freeze_after_start`,
    so ``FACTBUS_GC_FREEZE=0`` still turns it off) before the raw client's phase
    and again once the consuming bus has started, as ``factbus worker`` does
    (``factbus bench --gc-freeze``). Default False: the consuming process is
    measured as an embedding application, whose collector a library leaves alone."""

    keep: bool = False
    """Leave what the run made on the broker (``factbus bench --keep``), to look at
    it; by default it is removed when the run ends, also after a failure or a
    cancellation (:mod:`factbus.bench.cleanup`)."""

    name: str = ""
    """The run's name, which every topic, queue and group it makes on the broker
    starts with; empty: ``bench-<8 random hex digits>``."""

    def __post_init__(self) -> None:
        if self.publishers < 1:
            raise ConfigError("--publishers must be at least 1")
        if self.pack < 1:
            raise ConfigError("--pack must be at least 1")
        if self.publish_batch < 1 or self.batch_size < 1:
            raise ConfigError("--publish-batch and --batch-size must be at least 1")
        if self.publish_inflight < 1:
            raise ConfigError("--publish-inflight must be at least 1")
        if self.publish_inflight > 1 and self.shape != "independent" and not self.reorder:
            raise ConfigError(
                f"--publish-inflight {self.publish_inflight} overlaps publish calls, so a "
                f"chunk may reach the broker before the chunks holding its predecessors: "
                f"--shape {self.shape} needs --publish-inflight 1 (or --shape independent, "
                "or --reorder, whose order is shuffled anyway)"
            )
        if self.publisher_mode not in ("auto", "task", "process"):
            raise ConfigError("--publisher-mode must be auto, task or process")
        if self.facts < 1:
            raise ConfigError("--facts must be at least 1")

    def spec(self, seed: int, facts: int | None = None) -> WorkloadSpec:
        return WorkloadSpec(
            facts if facts is not None else self.facts,
            payload=self.payload,
            shape=self.shape,
            duplicates=self.duplicates,
            reorder=self.reorder,
            seed=seed,
        )


class Observer(Protocol):
    """Told what the run does, for a progress display. Called on the event loop."""

    def phase(self, name: str, total: int) -> None:
        """A phase began; ``total`` messages (or facts) to go."""

    def advance(self, name: str, done: int) -> None:
        """``done`` of the phase's total so far."""

    def note(self, text: str) -> None:
        """A line worth showing."""


class _Silent:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, name: str, done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass(slots=True)
class _Phase:
    """What the handler records for the workload being handled."""

    run: str
    facts: int
    handled_at: array[float]
    count: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    first_cpu: float = 0.0
    """This process's CPU seconds when the phase's first fact was handled."""


class Recorder:
    """The benchmark's handler: stamps each fact of the current phase once."""

    def __init__(self) -> None:
        self.current: _Phase | None = None
        self.strays = 0
        """Facts of no current phase (e.g. late copies of a finished phase)."""

    def begin(self, run: str, facts: int) -> _Phase:
        phase = _Phase(run, facts, array("d", bytes(8 * facts)))
        self.current = phase
        return phase

    def __call__(self, fact: Fact) -> None:
        phase = self.current
        fields = fact.fields
        if phase is None or fields["run"] != phase.run:
            self.strays += 1
            return
        n = fields["n"]
        if not phase.handled_at[n]:
            if not phase.count:
                phase.first_cpu = process_cpu()
            phase.count += 1
        phase.handled_at[n] = time.perf_counter()
        if phase.count == phase.facts:
            phase.done.set()


class _Sampler:
    """Peak resident memory of this process, sampled in the background."""

    def __init__(self) -> None:
        try:
            import psutil

            self._process: Any = psutil.Process()
        except ImportError:  # pragma: no cover - psutil is a bench extra
            self._process = None
        self.peak_mb = 0.0

    def sample(self) -> float:
        if self._process is None:
            return 0.0
        rss = float(self._process.memory_info().rss) / 2**20
        self.peak_mb = max(self.peak_mb, rss)
        return rss


async def run_bench(config: BenchConfig, observer: Observer | None = None) -> BenchResult:
    """Run the benchmark ``config`` describes (see the module docstring).

    :raises TimeoutError: a phase did not finish within ``config.timeout``.
    :raises FactbusError: the transport or store failed.
    """
    observer = observer or _Silent()
    run_id = uuid.uuid4().hex[:8]
    transport = config.transport or f"memory://bench-{run_id}"
    memory = transport.startswith("memory:")
    mode = config.publisher_mode
    if mode == "auto":
        mode = "task" if memory else "process"
    if memory and mode == "process":
        raise ConfigError("memory:// is in-process: use --publisher-mode task")
    if not memory:
        await _reachable(transport)
    if config.store:
        await _store_opens(config.store)
    topic = config.name or f"bench-{run_id}"
    node = f"{topic}-consumer"
    made = Made(transport, topic, [node])
    if config.baseline:
        made.raw.append(f"{topic}-raw")
        if config.drain:
            made.raw.append(f"{topic}-raw-drain")
    observer.note(
        f"run {topic}: what it makes on {redact(transport)} is named {topic}*"
        + (" and is kept (--keep)" if config.keep else " and is removed when it ends")
    )
    result: BenchResult | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="factbus-bench-") as tmp:
            store = config.store or f"sqlite:///{Path(tmp) / 'bench.db'}"
            publishers: Publishers = (
                PublisherTasks(config.publishers, transport, topic, config.pack)
                if mode == "task"
                else PublisherProcesses(config.publishers, transport, topic, config.pack)
            )
            run = _Run(config, observer, transport, store, topic, node, publishers)
            try:
                result = await run.execute()
            finally:
                try:
                    await run.close_buses()
                finally:
                    await publishers.aclose()
    finally:
        left = await _remove(made, config.keep, observer)
    assert result is not None  # execute() returned, or its error went on above
    if left:
        raise BenchCleanupError(result, left)
    return result


async def _reachable(url: str) -> None:
    """Connect to the broker ``url`` names and close again, before the run makes
    anything there: a broker that cannot be reached ends the run at once with
    the transport's own reason, not half-way with what it then cannot remove.

    :raises ConfigError: no transport is registered for the URL's scheme.
    :raises TransportError: the broker did not answer (names the URL and the cause).
    """
    transport = open_transport(url)
    try:
        await transport.connect()
    except TransportError as error:
        # The adapters' messages mostly name the URL already (Kafka's: its hosts).
        where = "" if redact(url) in str(error) else f"cannot reach {redact(url)}: "
        raise TransportError(f"{where}{error} (nothing was run)") from error
    finally:
        with contextlib.suppress(Exception):
            await transport.aclose()


async def _store_opens(url: str) -> None:
    """Open the store ``url`` names and close it again, before the run makes
    anything (as :func:`_reachable` for the broker).

    :raises FactbusError: it cannot be opened (names the URL and the cause).
    """
    store = open_store(url)
    try:
        await store.open()
    except FactbusError:
        raise
    except Exception as error:  # the driver's own: OSError, asyncpg's, sqlite3's
        raise FactbusError(
            f"cannot open the store {redact(url)}: {type(error).__name__}: {error} "
            "(nothing was run)"
        ) from error
    finally:
        with contextlib.suppress(Exception):
            await store.aclose()


async def _remove(made: Made, keep: bool, observer: Observer) -> list[str]:
    """Remove what the run made (unless ``keep``) and say so; the lines of what is left."""
    if keep:
        observer.note(f"kept on {redact(made.transport)} (--keep): {', '.join(made.names())}")
        return []
    left, took = await timed_remove(made)
    if left:
        log.warning("bench left objects on the broker", left=left)
        observer.note(f"NOT removed from the broker: {'; '.join(left)}")
    else:
        observer.note(f"removed what the run made on the broker ({made.topic}*) in {took:.2f} s")
    return left


class _Run:
    def __init__(
        self,
        config: BenchConfig,
        observer: Observer,
        transport: str,
        store: str,
        topic: str,
        node: str,
        publishers: Publishers,
    ) -> None:
        self.config = config
        self.observer = observer
        self.transport = transport
        self.store = store
        self.topic = topic
        self.node = node
        self.publishers = publishers
        self.sampler = _Sampler()
        self._buses: list[Bus] = []

    async def close_buses(self) -> None:
        """Close every consuming bus (idempotent): a Kafka group with members
        cannot be removed."""
        for bus in self._buses:
            with contextlib.suppress(Exception):
                await bus.aclose()

    async def execute(self) -> BenchResult:
        config, observer = self.config, self.observer
        peak_spec = config.spec(config.seed)
        await self.publishers.start()
        summary = await self.publishers.prepare(peak_spec)
        messages, body_bytes = summary.messages, summary.body_bytes
        # Every phase's workload is built now, so that memory sampled while the
        # bus runs is the pipeline's, not the benchmark's own facts.
        for spec in self._later_specs():
            await self.publishers.prepare(spec)
        # As in `factbus worker`: what start-up left alive is frozen, so full
        # collections skip it; for the raw client's phase and factbus's alike.
        frozen = config.gc_freeze and freeze_after_start()
        observer.note(
            f"{peak_spec.facts} facts as {messages} messages of ~{body_bytes} B "
            f"({config.shape}, duplicates {config.duplicates:g}, "
            f"{'reordered' if config.reorder else 'causal order'}), "
            f"{config.publishers} publisher {self.publishers.mode}(s)"
            + (
                f", {config.publish_inflight} calls in flight each"
                if config.publish_inflight > 1
                else ""
            )
        )

        client = ""
        baseline_rate = baseline_publish = baseline_elapsed = baseline_cpu = None
        baseline_producer_cpu: float | None = None
        if config.baseline:
            baseline = baseline_for(self.transport, f"{self.topic}-raw")
            client = baseline.client
            elapsed, published, cpu, producer_cpu = await self._baseline(
                baseline, peak_spec, messages
            )
            baseline_rate, baseline_publish = messages / elapsed, messages / published
            baseline_elapsed = elapsed
            baseline_cpu = round(cpu / messages * 1e6, 2)
            if producer_cpu is not None:
                baseline_producer_cpu = round(producer_cpu / messages * 1e6, 2)
            observer.note(f"baseline ({client}): {baseline_rate:,.0f} msgs/s end to end")

        recorder = Recorder()
        bus = self._bus(recorder)
        self.sampler.peak_mb = 0.0  # the baseline's own memory does not count
        rss_start = self.sampler.sample()
        await bus.start()
        if config.gc_freeze:
            freeze_after_start()  # the started bus too, as `factbus worker` does
        try:
            if config.warmup:
                await self._phase(
                    bus, recorder, "warm-up", config.spec(config.seed + 1000, config.warmup)
                )
            peak = await self._phase(
                bus, recorder, "peak", peak_spec, profile=config.profile or None
            )
            if self.publishers.mode == "process":
                raw = (
                    ""
                    if baseline_producer_cpu is None
                    else f" (raw producer {baseline_producer_cpu:.1f})"
                )
                observer.note(
                    f"peak: publishers {peak.publisher_cpu_s / peak.messages * 1e6:.1f} CPU "
                    f"µs/msg{raw}, consumer {peak.cpu_s / peak.messages * 1e6:.1f}"
                )
            half: HalfLoad | None = None
            if config.half_load:
                target = peak.messages_per_s / 2
                slow = await self._phase(
                    bus, recorder, "half load", config.spec(config.seed + 1), rate=target
                )
                half = HalfLoad(
                    round(target, 1),
                    round(slow.messages_per_s, 1),
                    slow.latency,
                    slow.lag_ms,
                    round(slow.cpu_s / slow.messages * 1e6, 2),
                    None
                    if self.publishers.mode != "process"
                    else round(slow.publisher_cpu_s / slow.messages * 1e6, 2),
                )
        finally:
            await bus.aclose()
        drain = baseline_drain = drain_cpu = None
        if config.drain:
            drain, drain_cpu = await self._drain(recorder, config.spec(config.seed + 2))
            if config.baseline:
                baseline_drain = await self._baseline_drain(peak_spec, messages)
        # The floor and memory per fact, on the drain's bodies (the peak's without a drain).
        floor_spec = config.spec(config.seed + 2) if config.drain else peak_spec
        bodies = build_workload(floor_spec).bodies
        self.observer.phase("floor", len(bodies))
        floor = floor_measure(bodies)
        memory = memory_per_fact(bodies)
        self.observer.advance("floor", len(bodies))
        observer.note(
            f"hand-written floor: {floor.per_s:,.0f} msgs/s, {floor.cpu_us_per_msg:.2f} CPU µs/msg "
            f"({floor.passes} passes); {memory:,.0f} B per received fact"
        )
        return BenchResult(
            transport=redact(self.transport),
            store=redact(self.store),
            client=client,
            facts=peak_spec.facts,
            messages=messages,
            payload=config.payload,
            body_bytes=body_bytes,
            shape=config.shape,
            duplicates=config.duplicates,
            reorder=config.reorder,
            publishers=config.publishers,
            publisher_mode=self.publishers.mode,
            batch_size=config.batch_size,
            publish_batch=config.publish_batch,
            warmup=config.warmup,
            publish_inflight=config.publish_inflight,
            native=envelope.NATIVE,
            native_reason=envelope.NATIVE_REASON,
            publish_per_s=peak.publish_per_s,
            facts_per_s=peak.facts / peak.elapsed,
            messages_per_s=peak.messages_per_s,
            elapsed_s=round(peak.elapsed, 6),
            baseline_per_s=baseline_rate,
            baseline_publish_per_s=baseline_publish,
            baseline_elapsed_s=None if baseline_elapsed is None else round(baseline_elapsed, 6),
            drain_per_s=drain,
            baseline_drain_per_s=baseline_drain,
            cpu_us_per_msg=round(peak.cpu_s / peak.messages * 1e6, 2),
            baseline_cpu_us_per_msg=baseline_cpu,
            publisher_cpu_us_per_msg=(
                None
                if self.publishers.mode != "process"
                else round(peak.publisher_cpu_s / peak.messages * 1e6, 2)
            ),
            baseline_publisher_cpu_us_per_msg=baseline_producer_cpu,
            latency_ms=peak.latency,
            half_load=half,
            rss_mb=round(self.sampler.peak_mb, 1),
            rss_start_mb=round(rss_start, 1),
            floor_per_s=floor.per_s,
            drain_cpu_us_per_msg=drain_cpu,
            floor_cpu_us_per_msg=floor.cpu_us_per_msg,
            pack=config.pack,
            memory_per_fact_bytes=memory,
            gc_frozen=frozen,
            pipeline={**self.stats, "strays": recorder.strays},
            machine=machine(),
        )

    def _later_specs(self) -> list[WorkloadSpec]:
        config = self.config
        specs = []
        if config.warmup:
            specs.append(config.spec(config.seed + 1000, config.warmup))
        if config.half_load:
            specs.append(config.spec(config.seed + 1))
        if config.drain:
            specs.append(config.spec(config.seed + 2))
        return specs

    def _bus(self, recorder: Recorder) -> Bus:
        """The consuming bus (a new one each time: the drain phase restarts it)."""
        bus = Bus(
            self.transport,
            self.store,
            topic=self.topic,
            node=self.node,
            batch_size=self.config.batch_size,
        )
        for fact_type in FACT_TYPES:
            bus.handler(fact_type)(recorder)
        self._buses.append(bus)
        return bus

    @property
    def stats(self) -> dict[str, Any]:
        """The consuming buses' counters, summed."""
        total: dict[str, Any] = {}
        for bus in self._buses:
            for key, value in bus.stats.as_dict().items():
                total[key] = total.get(key, 0) + value
        return total

    async def _drain(self, recorder: Recorder, spec: WorkloadSpec) -> tuple[float, float]:
        """(messages/s, CPU µs per message) of a new consuming bus draining a
        backlog published while none ran.

        Measured from the moment ``Bus.start()`` returned (subscribed; on Kafka
        with its first partition assignment: joining the group does not count)
        to the last step's commit; the CPU time is this process's (every thread)
        over the same window. The raw drain is timed the same way. When the
        first fact is handled more than :data:`LATE_JOIN_S` after ``start()``
        returned, the start gave up waiting for the assignment and the window
        starts at that first fact instead (noted on the observer).
        """
        summary = await self.publishers.prepare(spec)
        self.observer.phase("backlog", summary.messages)
        job = PublishJob(
            spec,
            self.config.publish_batch,
            start_at=time.perf_counter() + 0.05,
            inflight=self.config.publish_inflight,
        )
        async with asyncio.timeout(self.config.timeout):
            reports = await self.publishers.publish(job)
        self.publishers.release(spec)  # before the drain's window
        self.observer.advance("backlog", sum(r.messages for r in reports))
        phase = recorder.begin(summary.run, spec.facts)
        watcher = self._watch("drain", spec.facts, lambda: phase.count)
        bus = self._bus(recorder)
        try:
            await bus.start()
            start, cpu_before = time.perf_counter(), process_cpu()
            stats = bus.stats
            async with asyncio.timeout(self.config.timeout):
                await phase.done.wait()
                while stats.facts_received < summary.messages:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                while stats.handled < spec.facts:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            end, cpu_end = time.perf_counter(), process_cpu()
        finally:
            watcher.cancel()
            self.observer.advance("drain", phase.count)
            await bus.aclose()
        first = min(t for t in phase.handled_at if t > 0)
        if first - start > LATE_JOIN_S:
            self.observer.note(
                f"drain: first fact handled {first - start:.1f} s after Bus.start() "
                "returned (joining the group): timed from that fact"
            )
            start, cpu_before = first, phase.first_cpu
        cpu = cpu_end - cpu_before
        per_s = summary.messages / max(end - start, 1e-9)
        return round(per_s, 1), round(cpu / summary.messages * 1e6, 3)

    async def _baseline_drain(self, spec: WorkloadSpec, messages: int) -> float:
        """Messages/s of the raw consumer draining a backlog: from the moment
        ``subscribe()`` returned (on Kafka: assigned) to the last receipt, every
        message counted (see :meth:`_drain`)."""
        destination = f"{self.topic}-raw-drain"
        baseline = baseline_for(self.transport, destination)
        await baseline.setup(subscribe=False)
        try:
            await self.publishers.baseline(
                spec, destination, self.config.publish_batch, baseline.produce
            )
            watcher = self._watch("raw drain", messages, lambda: baseline.received)
            try:
                await baseline.subscribe()
                start = time.perf_counter()
                last = await baseline.consume(messages, self.config.timeout)
            finally:
                watcher.cancel()
                self.observer.advance("raw drain", baseline.received)
        finally:
            await baseline.teardown(remove=not self.config.keep)
        return round(messages / max(last - start, 1e-9), 1)

    def _watch(self, name: str, total: int, count: Callable[[], int]) -> asyncio.Task[None]:
        """Announce phase ``name`` now; report its progress and sample memory until cancelled."""
        self.observer.phase(name, total)
        return asyncio.create_task(self._progress(name, count))

    async def _progress(self, name: str, count: Callable[[], int]) -> None:
        while True:
            self.sampler.sample()
            self.observer.advance(name, count())
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def _baseline(
        self, baseline: Baseline, spec: WorkloadSpec, messages: int
    ) -> tuple[float, float, float, float | None]:
        """(end-to-end seconds, publish seconds, CPU seconds here, CPU seconds of
        the producer's process or ``None`` when it is this one) of the raw client."""
        timeout = self.config.timeout
        await baseline.setup()
        cpu_before = process_cpu()
        try:
            watcher = self._watch("baseline", messages, lambda: baseline.received)
            consumer = asyncio.create_task(baseline.consume(messages, timeout))
            try:
                start, end, producer_cpu = await _first(
                    self.publishers.baseline(
                        spec,
                        f"{self.topic}-raw",
                        self.config.publish_batch,
                        baseline.produce,
                    ),
                    consumer,
                )
                last = await consumer
                cpu = process_cpu() - cpu_before
            finally:
                consumer.cancel()
                watcher.cancel()
                self.observer.advance("baseline", baseline.received)
        finally:
            await baseline.teardown(remove=not self.config.keep)
        return last - start, end - start, cpu, producer_cpu

    async def _phase(
        self,
        bus: Bus,
        recorder: Recorder,
        name: str,
        spec: WorkloadSpec,
        *,
        rate: float | None = None,
        profile: str | None = None,
    ) -> _Measured:
        summary = await self.publishers.prepare(spec)
        stats = bus.stats
        received_before, handled_before = stats.facts_received, stats.handled
        expected = summary.messages
        phase = recorder.begin(summary.run, spec.facts)
        watcher = self._watch(name, spec.facts, lambda: phase.count)
        profiler = _Profiler(profile) if profile else None
        cpu_before = process_cpu()
        try:
            if profiler:
                profiler.start()
            job = PublishJob(
                spec,
                self.config.publish_batch,
                rate=rate,
                start_at=time.perf_counter() + 0.05,
                inflight=1 if rate else self.config.publish_inflight,
            )
            publishing = asyncio.create_task(self.publishers.publish(job))

            async def settled() -> float:
                await phase.done.wait()
                # The last step's commit: the bus's counters move after it.
                # Facts, not deliveries: a packed envelope is one delivery.
                while stats.facts_received < received_before + expected:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                while stats.handled < handled_before + spec.facts:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                return time.perf_counter()

            async with asyncio.timeout(self.config.timeout):
                reports = await publishing
                finished = await settled()
            cpu = process_cpu() - cpu_before
            if profiler:
                profiler.stop()
            self.publishers.release(spec)  # after the phase's window
        finally:
            watcher.cancel()
            self.observer.advance(name, phase.count)
            if profiler:
                profiler.save()
        start = min(r.start for r in reports)
        published_end = max(r.end for r in reports)
        sent = sum(r.messages for r in reports)
        stamps = merge_stamps(reports, spec.facts)
        elapsed = finished - start
        return _Measured(
            facts=spec.facts,
            messages=sent,
            elapsed=elapsed,
            publish_per_s=sent / max(published_end - start, 1e-9),
            messages_per_s=sent / elapsed,
            latency=Latency.of(latencies(stamps, phase.handled_at)),
            cpu_s=cpu,
            lag_ms=max(r.lag_p99_ms for r in reports),
            publisher_cpu_s=sum(r.cpu_s for r in reports),
        )


@dataclass(frozen=True, slots=True)
class _Measured:
    facts: int
    messages: int
    elapsed: float
    publish_per_s: float
    messages_per_s: float
    latency: Latency
    cpu_s: float
    lag_ms: float = 0.0
    publisher_cpu_s: float = 0.0
    """The publishers' CPU seconds (their processes, each over its publishing)."""


def process_cpu() -> float:
    """CPU seconds (user + system, every thread) this process has used
    (``CLOCK_PROCESS_CPUTIME_ID``: nanoseconds, where ``os.times`` counts
    10 ms ticks, too coarse for a drain of a few hundred ms)."""
    return time.process_time()


async def _first(main: Awaitable[T], guard: asyncio.Future[Any]) -> T:
    """Await ``main``; if ``guard`` fails first, raise its error instead of waiting on."""
    task = asyncio.ensure_future(main)
    done, _ = await asyncio.wait({task, guard}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done and guard.done() and guard.exception() is not None:
        task.cancel()
        raise guard.exception()  # type: ignore[misc]
    return await task


class _Profiler:
    """cProfile (``.prof``: wall time; ``.cpu.prof``: this thread's CPU time) or
    pyinstrument (``.html``, else text; wall time) around a phase."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._impl: Any = None

    def start(self) -> None:
        if self.path.endswith(".prof"):
            import cProfile

            cpu = self.path.endswith(".cpu.prof")
            self._impl = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
            self._impl.enable()
        else:
            try:
                from pyinstrument import Profiler
            except ImportError as error:
                raise ConfigError(
                    "--profile needs pyinstrument (pip install pyinstrument), or a .prof path"
                ) from error
            self._impl = Profiler(interval=0.001, async_mode="disabled")
            self._impl.start()

    def stop(self) -> None:
        if self._impl is None:
            return
        if self.path.endswith(".prof"):
            self._impl.disable()
        else:
            self._impl.stop()

    def save(self) -> None:
        impl, self._impl = self._impl, None
        if impl is None:
            return
        if self.path.endswith(".prof"):
            impl.dump_stats(self.path)
            return
        if getattr(impl, "is_running", False):
            impl.stop()
        text = (
            impl.output_html()
            if self.path.endswith(".html")
            else impl.output_text(unicode=True, color=False, show_all=False)
        )
        Path(self.path).write_text(text, encoding="utf-8")
        impl.last_session.save(session_path(self.path))


def session_path(profile: str) -> str:
    """Where a pyinstrument profile's raw session goes (for :mod:`factbus.bench.profile`)."""
    return profile + ".session.json"
