"""Publishers for a benchmark: concurrent tasks in this process, or processes.

Either kind publishes a workload's messages with ``P`` publishers, each on a
:class:`~factbus.Bus` of its own (publish-only, ``memory://`` store), chunks
of ``publish_batch`` messages dealt round-robin; each publish call is stamped
(``time.perf_counter()`` just before the call) and a fact's publish time is
the stamp of its first copy. Without a ``rate`` the calls' stamps are spread
over their facts after the last call returned, outside the timed window (and
its CPU figure): bookkeeping of the bench's, which the raw producer does not
do.

Without a ``rate`` (the warm-up, the peak and the drain's backlog) each
publisher makes its calls one chunk after another; with ``inflight`` K > 1 it
keeps up to K calls in flight (a task per call, over consecutive chunks: a
call starts as soon as one of the K before it returned), as an application
wanting throughput from a confirm-per-call API would. Calls then overlap, so
a chunk may reach the broker before an earlier one: only workloads without a
causal publish order to keep take K > 1 (``--shape independent``, or
``--reorder``; :class:`~factbus.bench.runner.BenchConfig` refuses the others).

With a ``rate`` (the half-load phase) publishing is paced per message, not
per chunk: message ``i`` of the workload is due ``i / rate`` seconds after the
start, as if an application had it to publish then. Each publisher makes a
call as soon as a message is due (with ``pack`` N: as soon as N are, one full
envelope), with every message due by then (at most ``publish_batch``; at a few
thousand messages per second one or a few per call), without waiting for its
earlier calls' confirms (at most :data:`PACED_IN_FLIGHT` calls in flight), and
stamps each fact when the call carrying it is made. So a fact's latency is its
own call, the broker and the consumer, not the writes and confirms of a chunk
of up to ``publish_batch`` other messages; how late the calls were against the
schedule (a publisher short of CPU) is reported apart, as ``lag_p99_ms``
(docs/decisions.md, "Latency at half load").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from factbus.bench.workload import Workload, WorkloadSpec, WorkloadSummary, build_workload
from factbus.bus import Bus
from factbus.errors import FactbusError

PACED_IN_FLIGHT = 256
"""Publish calls a paced publisher keeps in flight at most (awaiting confirms)."""


@dataclass(frozen=True, slots=True)
class PublishJob:
    """One phase's publishing."""

    spec: WorkloadSpec
    publish_batch: int
    rate: float | None = None
    """Messages per second for all publishers together; ``None``: as fast as possible."""
    start_at: float = 0.0
    """``perf_counter()`` time to begin at (all publishers together)."""
    inflight: int = 1
    """Without a ``rate``: publish calls each publisher keeps in flight (1: one
    call after another, each awaiting its confirms). Ignored with a ``rate``."""


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What one publisher did: its first and last instants, and per-fact stamps."""

    start: float
    end: float
    messages: int
    stamps: array[float]
    """``stamps[n]``: when fact ``n`` was first published by this publisher (0: not)."""
    lag_p99_ms: float = 0.0
    """Paced publishing: p99 over messages of call time minus due time, ms."""
    cpu_s: float = 0.0
    """CPU seconds (every thread) of the process the publisher ran in, from
    ``start`` to ``end``: the publisher's own when it is a process of its own."""


def merge_stamps(reports: Sequence[PublishReport], facts: int) -> array[float]:
    """Each fact's earliest publish stamp over every publisher."""
    merged = array("d", bytes(8 * facts))
    for report in reports:
        for n, stamp in enumerate(report.stamps):
            if stamp and (not merged[n] or stamp < merged[n]):
                merged[n] = stamp
    return merged


async def publish_share(
    bus: Bus, workload: Workload, job: PublishJob, publisher: int, publishers: int
) -> PublishReport:
    """Publish ``publisher``'s share of ``workload`` on ``bus`` (see the module docstring)."""
    stamps = array("d", bytes(8 * workload.unique))
    chunks = workload.chunks(job.publish_batch, publisher, publishers)
    delay = job.start_at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    start, cpu = time.perf_counter(), time.process_time()
    if job.rate:
        sent, lag = await _publish_paced(bus, workload, chunks, job, start, stamps)
        return PublishReport(
            start, time.perf_counter(), sent, stamps, lag, time.process_time() - cpu
        )
    made: list[tuple[range, float]] = []
    if job.inflight > 1:
        await _publish_overlapped(bus, workload, chunks, job.inflight, made)
    else:
        order = workload.order
        for chunk in chunks:
            made.append((chunk, time.perf_counter()))
            await bus.publish(*order[chunk.start : chunk.stop], ancestors=False)
    end, cpu = time.perf_counter(), time.process_time() - cpu
    _stamp(stamps, workload.numbers, made)
    return PublishReport(start, end, sum(len(chunk) for chunk in chunks), stamps, 0.0, cpu)


def _stamp(
    stamps: array[float], numbers: list[int], made: Sequence[tuple[Sequence[int], float]]
) -> None:
    """Stamp each fact with the instant of the first call that carried it: ``made``
    lists each call's message indices and instant, in call order. Done after the
    timed window: the stamps are the bench's bookkeeping, not publishing work
    (the raw producer keeps none)."""
    for call, now in made:
        for i in call:
            n = numbers[i]
            if not stamps[n]:
                stamps[n] = now


async def _publish_overlapped(
    bus: Bus,
    workload: Workload,
    chunks: list[range],
    inflight: int,
    made: list[tuple[range, float]],
) -> int:
    """Publish ``chunks`` in order, one call each, with up to ``inflight`` calls
    in flight: a call is made (and its chunk and instant listed in ``made``) as
    soon as fewer than ``inflight`` are awaiting their confirms. Returns once
    every call returned; the first failed call fails it (the others are
    cancelled)."""
    order = workload.order
    in_flight: set[asyncio.Task[Any]] = set()
    sent = 0
    try:
        for chunk in chunks:
            while len(in_flight) >= inflight:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a failed publish fails the phase
            made.append((chunk, time.perf_counter()))
            in_flight.add(
                asyncio.create_task(bus.publish(*order[chunk.start : chunk.stop], ancestors=False))
            )
            sent += len(chunk)
        if in_flight:
            await asyncio.gather(*in_flight)
            in_flight = set()
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
    return sent


async def _publish_paced(
    bus: Bus,
    workload: Workload,
    chunks: list[range],
    job: PublishJob,
    start: float,
    stamps: array[float],
) -> tuple[int, float]:
    """Publish ``chunks``' messages each when due, ``start + i / rate`` (see the
    module docstring); stamp each fact when its call is made. Returns the count
    and the p99 of how late the calls were (ms)."""
    assert job.rate
    order, numbers = workload.order, workload.numbers
    indices = [i for chunk in chunks for i in chunk]
    period = 1.0 / job.rate
    limit = job.publish_batch
    fill = max(1, min(bus.settings.pack, limit))
    in_flight: set[asyncio.Task[Any]] = set()
    finished: list[asyncio.Task[Any]] = []
    """Calls completed since the last look (their done callback): a call looks at
    these only, not at every call in flight (up to PACED_IN_FLIGHT), which cost
    the publisher process ~4 µs a call (PROFILE.md §25)."""
    lags: list[float] = []
    position, total = 0, len(indices)
    while position < total:
        # A call is due once `fill` messages are (pack N: a full envelope).
        end = min(position + fill, total)
        now = time.perf_counter()
        due = start + indices[end - 1] * period
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while end < total and end - position < limit and start + indices[end] * period <= now:
            end += 1
        while len(in_flight) >= PACED_IN_FLIGHT:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failed publish fails the phase
            now = time.perf_counter()
        call = indices[position:end]
        for i in call:
            n = numbers[i]
            if not stamps[n]:
                stamps[n] = now
            lags.append(now - start - i * period)
        task = asyncio.create_task(bus.publish(*(order[i] for i in call), ancestors=False))
        task.add_done_callback(finished.append)
        in_flight.add(task)
        position = end
        if finished:
            for task in finished:
                task.result()  # a failed publish fails the phase
                in_flight.discard(task)
            finished.clear()
    if in_flight:
        await asyncio.gather(*in_flight)
    lags.sort()
    return total, round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 3) if lags else 0.0


class Publishers(Protocol):
    """``P`` publishers (tasks or processes) on one transport and topic."""

    mode: str

    async def start(self) -> None: ...

    async def prepare(self, spec: WorkloadSpec) -> WorkloadSummary:
        """Build ``spec``'s workload where it will be published (not timed)."""
        ...

    async def publish(self, job: PublishJob) -> list[PublishReport]: ...

    def release(self, spec: WorkloadSpec) -> None:
        """``spec``'s workload was published and its phase measured: forget it
        here (see :func:`forget_published`). Called by the runner after the
        phase's timed window, never inside it."""
        ...

    async def baseline(
        self, spec: WorkloadSpec, destination: str, publish_batch: int, produce: Any
    ) -> tuple[float, float, float | None]:
        """Run the raw producer once (one producer) on ``spec``'s bodies: its
        (start, end) and, when it ran in a process of its own, that process's
        CPU seconds while it produced (else ``None``). ``produce`` is the
        in-process baseline's ``produce``, used by tasks."""
        ...

    async def aclose(self) -> None: ...


def _publisher_bus(transport: str, topic: str, index: int, pack: int = 1) -> Bus:
    return Bus(
        transport,
        "memory://",
        topic=topic,
        node=f"{topic}-pub{index}",
        consume=False,
        pack=pack,
    )


class PublisherTasks:
    """Publishers as tasks of this process's event loop."""

    mode = "task"

    def __init__(self, count: int, transport: str, topic: str, pack: int = 1) -> None:
        self._buses = [_publisher_bus(transport, topic, i, pack) for i in range(count)]
        self._workloads: dict[WorkloadSpec, Workload] = {}

    def workload(self, spec: WorkloadSpec) -> Workload:
        if spec not in self._workloads:
            self._workloads[spec] = build_workload(spec)
        return self._workloads[spec]

    async def start(self) -> None:
        for bus in self._buses:
            await bus.start()

    async def prepare(self, spec: WorkloadSpec) -> WorkloadSummary:
        return self.workload(spec).summary()

    async def publish(self, job: PublishJob) -> list[PublishReport]:
        """Publish ``job``'s workload; it is kept until :meth:`release`.

        Not forgotten here: these publishers share the consuming process's event
        loop, and freeing a workload (~100,000 objects per 50,000 facts) holds
        that loop 20-45 ms while the phase's last facts are still being received:
        the bench's own bookkeeping inside the measured window (memory:// SQLite
        cell, 3 pairs at load 0.7-0.8: half-load max 8.4-13.8 against 24.0-25.7 ms;
        not in PROFILE.md, whose §29 is the SQLite store's fsyncs)."""
        workload = self.workload(job.spec)
        count = len(self._buses)
        return list(
            await asyncio.gather(
                *(publish_share(bus, workload, job, i, count) for i, bus in enumerate(self._buses))
            )
        )

    def release(self, spec: WorkloadSpec) -> None:
        forget_published(self._workloads, spec)

    async def baseline(
        self, spec: WorkloadSpec, destination: str, publish_batch: int, produce: Any
    ) -> tuple[float, float, float | None]:
        workload = self.workload(spec)
        start, end = await produce(workload.bodies, workload.keys, workload.chunks(publish_batch))
        return float(start), float(end), None

    async def aclose(self) -> None:
        for bus in self._buses:
            await bus.aclose()
        self._workloads.clear()


class PublisherProcesses:
    """Publishers as processes (``spawn``), one bus each; see the module docstring."""

    mode = "process"

    def __init__(self, count: int, transport: str, topic: str, pack: int = 1) -> None:
        self._count = count
        self._pack = pack
        self._transport = transport
        self._topic = topic
        self._children: list[tuple[Any, Connection]] = []

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for index in range(self._count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_child_main,
                args=(child, index, self._count, self._transport, self._topic, self._pack),
                name=f"factbus-bench-publisher-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._children.append((process, parent))
        await self._replies()

    async def _send_all(self, command: str, payload: Any) -> list[Any]:
        for _, conn in self._children:
            conn.send((command, payload))
        return await self._replies()

    async def _replies(self, children: Sequence[tuple[Any, Connection]] | None = None) -> list[Any]:
        replies = await asyncio.gather(
            *(asyncio.to_thread(_receive, conn) for _, conn in (children or self._children))
        )
        errors = [payload for status, payload in replies if status == "error"]
        if errors:
            raise FactbusError(f"publisher process failed: {errors[0]}")
        return [payload for _, payload in replies]

    async def prepare(self, spec: WorkloadSpec) -> WorkloadSummary:
        summaries: list[WorkloadSummary] = await self._send_all("prepare", spec)
        return summaries[0]

    async def publish(self, job: PublishJob) -> list[PublishReport]:
        return await self._send_all("publish", job)

    def release(self, spec: WorkloadSpec) -> None:
        """Nothing to do: each process forgets a workload as soon as it has
        published it, on a core the consuming process does not wait for."""

    async def baseline(
        self, spec: WorkloadSpec, destination: str, publish_batch: int, produce: Any
    ) -> tuple[float, float, float | None]:
        first = self._children[:1]
        first[0][1].send(("baseline", (spec, destination, publish_batch)))
        (times,) = await self._replies(first)
        return float(times[0]), float(times[1]), float(times[2])

    async def aclose(self) -> None:
        children, self._children = self._children, []
        for _process, conn in children:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for process, conn in children:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
            conn.close()


def forget_published(workloads: dict[WorkloadSpec, Workload], spec: WorkloadSpec) -> None:
    """Drop ``spec``'s workload once it was published: every phase's workload is
    built before the bus runs (:meth:`~factbus.bench.runner._Run.execute`), and
    each holds two tracked objects per fact (a ``Fact`` and its ``FactRef``)
    that every full collection of the publishing process walks; kept to the end,
    the peak's and warm-up's made a memory:// half-load phase's full collection
    walk ~400,000 objects (PROFILE.md, "Survivors"). A later phase that
    needs the same bodies (the raw drain) builds them again, outside its timed
    window."""
    workloads.pop(spec, None)


@contextlib.contextmanager
def _set_aside(paced: bool) -> Iterator[None]:
    """While a publisher process publishes a paced (half-load) job, keep every
    object alive at its start out of the cyclic collector's walks
    (:func:`gc.freeze`, then :func:`gc.unfreeze`: both O(1), no collection).

    What is alive then is mostly the bench's bookkeeping: the workloads, built
    whole before the bus runs (an application makes its facts as it publishes
    them), ~100,000 tracked objects per 50,000 facts, the later phases' too.
    Unfrozen, a full (generation-2) collection due in the phase walks them all:
    in the Kafka cell's half load, 107-138 ms on the event loop's thread, during
    which the paced publisher fell that far behind its schedule, and every
    fact's latency with it (PROFILE.md §20). Frozen, a full collection walks
    only what the phase itself keeps; a workload dropped meanwhile
    (:func:`forget_published`) is still freed by its reference counts. Unpaced
    jobs (warm-up, peak, drain backlog) are left as they were: with nothing
    frozen the collector's own pacing (a full collection once survivors grow by
    a quarter) stays that of an application's process.
    """
    if not paced:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _receive(conn: Connection) -> tuple[str, Any]:
    try:
        reply: tuple[str, Any] = conn.recv()
    except EOFError:
        return ("error", "publisher process exited")
    return reply


def _child_main(
    conn: Connection, index: int, count: int, transport: str, topic: str, pack: int
) -> None:
    asyncio.run(_child(conn, index, count, transport, topic, pack))


async def _child(
    conn: Connection, index: int, count: int, transport: str, topic: str, pack: int
) -> None:
    bus = _publisher_bus(transport, topic, index, pack)
    workloads: dict[WorkloadSpec, Workload] = {}
    try:
        await bus.start()
        conn.send(("ok", None))
        while True:
            command, payload = await asyncio.to_thread(conn.recv)
            if command == "stop":
                break
            try:
                if command == "prepare":
                    if payload not in workloads:
                        workloads[payload] = build_workload(payload)
                    conn.send(("ok", workloads[payload].summary()))
                elif command == "publish":
                    job: PublishJob = payload
                    if job.spec not in workloads:
                        workloads[job.spec] = build_workload(job.spec)
                    with _set_aside(paced=job.rate is not None):
                        report = await publish_share(bus, workloads[job.spec], job, index, count)
                    forget_published(workloads, job.spec)
                    conn.send(("ok", report))
                elif command == "baseline":
                    from factbus.bench.baseline import baseline_for

                    spec, destination, publish_batch = payload
                    workload = workloads.get(spec) or build_workload(spec)
                    producer = baseline_for(transport, destination)
                    cpu = time.process_time()
                    start, end = await producer.produce(
                        workload.bodies, workload.keys, workload.chunks(publish_batch)
                    )
                    cpu = time.process_time() - cpu
                    # A baseline that times its own window gives that window's CPU.
                    measured = getattr(producer, "produce_cpu_s", None)
                    conn.send(("ok", (start, end, cpu if measured is None else measured)))
                else:
                    conn.send(("error", f"unknown command {command!r}"))
            except Exception as error:
                conn.send(("error", f"{type(error).__name__}: {error}"))
    except Exception as error:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        await bus.aclose()
        conn.close()
