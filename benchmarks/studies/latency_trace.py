"""Trace one ``factbus bench`` run's half-load phase end to end, fact by fact.

Runs :func:`factbus.bench.runner.run_bench` unchanged (warm-up, peak, half load;
no baseline, no drain) with tracing hooks installed by monkeypatching, in the
consuming process and in the publisher process (whose ``_child_main`` is
swapped for one that installs its hooks first). Every time is
``time.perf_counter()``, which is ``CLOCK_MONOTONIC`` on Linux: one clock for
both processes.

Recorded per half-load fact: the publish stamp (the bench's own, from the
publisher's report), the moment its ``Bus.publish`` began running, the
transport publish call and its return (every confirm in), the delivery
reaching the subscription's buffer (``BufferedSubscription._deliver``: the
aio-pika consumer callback on RabbitMQ, the thread hand-off's callback on
Kafka), the pipeline step that carried it (start, decode end, commit start and
end, end) and the handler's call. Recorded for the consuming process: every
step (with the loop thread's CPU time), every SQLite ``COMMIT`` and WAL
checkpoint, every garbage collection, the AMQP acks sent, the Kafka thread's
hand-offs and pauses, a full collection's cost at each phase's start, and a
1 ms ticker's lateness with the loop thread's CPU time meanwhile: a late tick
with little CPU is the process waiting for a core, with much CPU the loop busy.

Everything is kept in ``array`` rows (nothing the collector walks); the hooks
cost a JSON parse of each delivery's body, twice, and the ticker.

The report (stdout, and ``--json``) gives the latency percentiles, each
segment's percentiles (all facts and those above ``--slow-ms``), where the
facts at or above the p99 spent their time (before arrival or in the
consumer), a series per half second, the process's events over the phase,
and a timeline around the slowest facts.

Run (brokers up)::

    .venv/bin/python benchmarks/studies/latency_trace.py \\
        --transport amqp://guest:guest@127.0.0.1:5672/ --facts 20000 --json /tmp/trace.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import pickle
import sqlite3
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from _common import KAFKA_BROKER, machine_jiffies, pct, process_cpu, thread_schedstats

from factbus.bench import publisher as bench_publisher
from factbus.bench import runner as bench_runner
from factbus.bench.runner import BenchConfig, run_bench

now = time.perf_counter


class Rows:
    """Rows of ``width`` floats in one ``array``: nothing the garbage collector
    walks, so tracing does not lengthen the collections it measures."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.data = array("d")

    def add(self, *values: float) -> None:
        self.data.extend(values)

    def __iter__(self) -> Any:
        data, width = self.data, self.width
        for i in range(0, len(data), width):
            yield tuple(data[i : i + width])

    def __len__(self) -> int:
        return len(self.data) // self.width


class Trace:
    """What the consuming process records (see the module docstring)."""

    def __init__(self) -> None:
        self.steps = Rows(8)  # start, end, size, decode_end, commit_start, commit_end, index, cpu
        self.commits = Rows(2)
        self.checkpoints = Rows(3)  # start, end, 1 on the loop thread / 0 in a worker
        self.gcs = Rows(3)  # start, end, generation
        self.acks = Rows(3)  # start, end, count
        self.ticks = Rows(3)  # due, woke, CPU s of the loop thread meanwhile (> 4 ms late)
        self.delivers = Rows(2)  # t, count
        self.thread = Rows(2)  # t, count (Kafka: the thread hands a batch on)
        self.pauses = Rows(2)  # t, 1 paused / 0 resumed (Kafka: the thread's flow control)
        self.idle_waits = Rows(2)  # start, end: a store call waited for its writer thread
        self.begins: list[tuple[float, str, int]] = []
        self.collections: list[tuple[int, float, float]] = []
        """Per phase: objects tracked, and a full collection's wall and CPU ms."""
        self.run = ""
        """The traced run (the third phase: half load)."""
        self.arrived = array("d")
        self.step_of = array("l")
        self.handled = array("d")
        self.taken = array("d")
        """Kafka: when the consumer thread took the record from librdkafka."""
        self.taken_by_key: dict[bytes, float] = {}
        self.cpu_at_begin: dict[str, Any] = {}
        self.cpu_at_end: dict[str, Any] = {}
        self.handled_count = 0
        self.facts = 0

    def cpu_snapshot(self) -> dict[str, Any]:
        """Machine CPU (``/proc/stat``: busy and total jiffies) and, for this
        process's threads, time on a CPU and time runnable but waiting for one
        (``/proc/self/task/*/schedstat``, ns)."""
        total, idle = machine_jiffies()
        on_cpu = waiting = 0.0
        threads: dict[str, float] = {}
        for name, run, wait in thread_schedstats().values():
            on_cpu += run
            waiting += wait
            # librdkafka names its threads rdk:<role>; group them per role.
            key = name.split("/")[0] if name.startswith("rdk:") else name
            threads[key] = threads.get(key, 0.0) + run
        return {
            "t": now(),
            "broker_cpu_s": process_cpu(KAFKA_BROKER),
            "total": total,
            "idle": idle,
            "on_cpu_ns": on_cpu,
            "waiting_ns": waiting,
            "threads": threads,
        }

    def begin(self, run: str, facts: int) -> None:
        self.begins.append((now(), run, facts))
        self.cpu_at_begin = self.cpu_snapshot()
        self.handled_count = 0
        if COLLECT_AT_PHASE_START:
            # What a full collection walks now, and what one costs (measured once
            # per phase; it also resets the collector's counts, so --no-collect
            # leaves the collector's pacing as the bench's).
            start, cpu = now(), time.thread_time()
            gc.collect()
            self.collections.append(
                (len(gc.get_objects()), (now() - start) * 1e3, (time.thread_time() - cpu) * 1e3)
            )
        if len(self.begins) == 3:
            self.run = run
            self.arrived = array("d", bytes(8 * facts))
            self.handled = array("d", bytes(8 * facts))
            self.step_of = array("l", [-1]) * facts
            self.taken = array("d", bytes(8 * facts))
            self.facts = facts

    def number(self, body: bytes) -> int:
        """The head fact's ``n`` if it belongs to the traced run, else -1."""
        fields = orjson.loads(body)["facts"][-1]["fields"]
        return int(fields["n"]) if fields["run"] == self.run else -1


TRACE = Trace()
COLLECT_AT_PHASE_START = True


# -- the consuming process's hooks -------------------------------------------------


def _install_consumer_hooks() -> None:
    from factbus import pipeline as pipeline_module
    from factbus.transport import buffered

    trace = TRACE
    deliver = buffered.BufferedSubscription._deliver

    def traced_deliver(self: Any, items: Any) -> None:
        items = list(items)
        t = now()
        trace.delivers.add(t, len(items))
        if trace.run:
            arrived = trace.arrived
            taken_by_key = trace.taken_by_key
            for d in items:
                # Kafka buffers librdkafka's records as they came (its
                # deliveries are made when taken); other adapters, deliveries.
                record = d if not hasattr(d, "body") else getattr(d, "_message", None)
                n = trace.number(d.body if record is not d else d.value())
                if n >= 0 and not arrived[n]:
                    arrived[n] = t
                    if record is not None:
                        trace.taken[n] = taken_by_key.pop(record.key(), 0.0)
        deliver(self, items)

    buffered.BufferedSubscription._deliver = traced_deliver  # type: ignore[method-assign]

    Pipeline = pipeline_module.Pipeline
    step = Pipeline.step
    decode = Pipeline._decode
    commit = Pipeline._commit
    current = array("d", [0.0, 0.0, 0.0])

    async def traced_decode(self: Any, deliveries: Any) -> Any:
        result = await decode(self, deliveries)
        current[0] = now()
        return result

    decode_each = pipeline_module.decode_each

    def traced_decode_each(*args: Any, **kwargs: Any) -> Any:
        # A step of a DeliveryBatch decodes its bodies here, not in _decode.
        result = decode_each(*args, **kwargs)
        current[0] = now()
        return result

    async def traced_commit(self: Any, buffer: Any, positions: Any) -> Any:
        current[1] = now()
        result = await commit(self, buffer, positions)
        current[2] = now()
        return result

    async def traced_step(self: Any, deliveries: Sequence[Any]) -> None:
        current[0] = current[1] = current[2] = 0.0
        start = now()
        cpu = time.thread_time()
        try:
            await step(self, deliveries)
        finally:
            end = now()
            index = len(trace.steps)
            trace.steps.add(start, end, len(deliveries), *current, index, time.thread_time() - cpu)
            if trace.run:
                step_of = trace.step_of
                # A DeliveryBatch (what Bus steps with) or a sequence of deliveries.
                bodies = getattr(deliveries, "bodies", None)
                if bodies is None:
                    bodies = [d.body for d in deliveries]
                for body in bodies:
                    n = trace.number(body)
                    if n >= 0 and step_of[n] < 0:
                        step_of[n] = index

    Pipeline.step = traced_step  # type: ignore[method-assign]
    Pipeline._decode = traced_decode  # type: ignore[method-assign]
    pipeline_module.decode_each = traced_decode_each  # type: ignore[assignment]
    Pipeline._commit = traced_commit  # type: ignore[method-assign]

    def timed(run: Callable[[], sqlite3.Cursor], sql: str) -> sqlite3.Cursor:
        start = now()
        cursor = run()  # runs the statement's first step
        if sql == "COMMIT":
            trace.commits.add(start, now())
        else:
            loop = threading.current_thread() is threading.main_thread()
            trace.checkpoints.add(start, now(), 1.0 if loop else 0.0)
        return cursor

    class TimedCursor(sqlite3.Cursor):
        # The store runs a step's statements (its COMMIT included) on one cursor.
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            if sql == "COMMIT" or sql.startswith("PRAGMA wal_checkpoint"):
                return timed(lambda: super(TimedCursor, self).execute(sql, *args), sql)
            return super().execute(sql, *args)

    class TimedConnection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            if sql == "COMMIT" or sql.startswith("PRAGMA wal_checkpoint"):
                return timed(lambda: super(TimedConnection, self).execute(sql, *args), sql)
            return super().execute(sql, *args)

        def cursor(self, factory: Any = None) -> Any:
            return super().cursor(factory or TimedCursor)

    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", TimedConnection)
        return connect(*args, **kwargs)

    sqlite3.connect = traced_connect  # type: ignore[assignment]

    from factbus.store import sqlite as sqlite_module

    idle = sqlite_module.SqliteStore._idle

    async def traced_idle(self: Any) -> None:
        pending = self._pending
        if pending is None or pending.done():
            return await idle(self)
        start = now()
        try:
            return await idle(self)
        finally:
            trace.idle_waits.add(start, now())

    sqlite_module.SqliteStore._idle = traced_idle  # type: ignore[method-assign]

    gc_started = array("d", [0.0])

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = now()
        else:
            trace.gcs.add(gc_started[0], now(), info["generation"])

    gc.callbacks.append(on_gc)

    recorder_call = bench_runner.Recorder.__call__

    def traced_call(self: Any, fact: Any) -> None:
        recorder_call(self, fact)
        fields = fact.fields
        if fields["run"] == trace.run:
            n = fields["n"]
            if not trace.handled[n]:
                trace.handled[n] = now()
                trace.handled_count += 1
                if trace.handled_count == trace.facts:
                    trace.cpu_at_end = trace.cpu_snapshot()

    bench_runner.Recorder.__call__ = traced_call  # type: ignore[method-assign]

    begin = bench_runner.Recorder.begin

    def traced_begin(self: Any, run: str, facts: int) -> Any:
        trace.begin(run, facts)
        return begin(self, run, facts)

    bench_runner.Recorder.begin = traced_begin  # type: ignore[method-assign]

    try:
        from factbus_amqp import transport as amqp_transport
    except ImportError:  # pragma: no cover
        amqp_transport = None
    if amqp_transport is not None:
        send = amqp_transport._ConsumerChannel._send

        async def traced_send(self: Any) -> None:
            start = now()
            count = len(self._intents)
            await send(self)
            trace.acks.add(start, now(), count)

        amqp_transport._ConsumerChannel._send = traced_send  # type: ignore[method-assign]

    try:
        from factbus_kafka import subscription as kafka_subscription
    except ImportError:  # pragma: no cover
        kafka_subscription = None
    if kafka_subscription is not None:
        call = kafka_subscription.KafkaSubscription._call

        def traced_call_threadsafe(self: Any, callback: Callable[..., None], *args: Any) -> None:
            # Records handed on (not the partition numbers of an assignment).
            if args and getattr(callback, "__name__", "") == "_receive":
                t = now()
                trace.thread.add(t, len(args[0]))
                if trace.run:
                    taken_by_key = trace.taken_by_key
                    for message in args[0]:
                        taken_by_key[message.key()] = t
            call(self, callback, *args)

        kafka_subscription.KafkaSubscription._call = traced_call_threadsafe  # type: ignore[method-assign]

        class TracedConsumer(kafka_subscription.Consumer):  # type: ignore[misc,name-defined]
            def pause(self, partitions: Any) -> None:
                trace.pauses.add(now(), 1.0)
                super().pause(partitions)

            def resume(self, partitions: Any) -> None:
                trace.pauses.add(now(), 0.0)
                super().resume(partitions)

        kafka_subscription.Consumer = TracedConsumer  # type: ignore[attr-defined]


def _commit_on_loop() -> None:
    """The SQLite store's writer-thread work done in place, on the calling thread."""
    from factbus.store import sqlite as sqlite_module

    def in_place(self: Any, work: Callable[[], None]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            work()
        except BaseException as error:  # the store reads it from the future
            done.set_exception(error)
        else:
            done.set_result(None)
        return done

    sqlite_module.SqliteStore._in_writer = in_place  # type: ignore[method-assign]


def _fixed_half_rate(rate: float) -> None:
    """The half-load phase paced at ``rate`` msgs/s, whatever the peak was."""
    phase = bench_runner._Run._phase

    async def fixed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("rate"):
            kwargs["rate"] = rate
        return await phase(self, *args, **kwargs)

    bench_runner._Run._phase = fixed  # type: ignore[method-assign]


async def _ticker(stop: asyncio.Event) -> None:
    """How late a 1 ms sleep wakes: the spans the event loop was held."""
    ticks = TRACE.ticks
    cpu = time.thread_time
    while not stop.is_set():
        due = now() + 0.001
        before = cpu()
        await asyncio.sleep(0.001)
        woke = now()
        if woke - due > 0.004:
            ticks.add(due, woke, cpu() - before)


# -- the publisher process's hooks ---------------------------------------------------


def traced_child_main(*args: Any) -> None:
    """The bench's publisher process, with the publish calls traced: for each
    fact of a paced phase, when its ``Bus.publish`` began running, when the
    transport call began and when it returned (every confirm in)."""
    trace_dir = Path(os.environ["FACTBUS_TRACE_DIR"])
    calls = Rows(4)  # n, entered, sent, confirmed
    reports = Rows(2)  # n, when its delivery report came (Kafka)
    collections = Rows(3)  # start, end, generation (the publisher process's collector)
    gc_started = array("d", [0.0])

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = now()
        elif info["generation"] >= 1:
            collections.add(gc_started[0], now(), info["generation"])

    gc.callbacks.append(on_gc)
    from factbus.bus import Bus

    publish = Bus.publish
    number: dict[str, int] = {}  # head hash -> n
    entered_at: dict[str, float] = {}

    async def traced_publish(self: Any, *facts: Any, ancestors: bool = True) -> Any:
        entered = now()
        for fact in facts:
            number[fact.hash] = fact.fields["n"]
            entered_at[fact.hash] = entered
        transport_class = type(self.transport)
        if not getattr(transport_class, "_traced", False):
            inner = transport_class.publish

            async def timed(transport: Any, topic: str, messages: Any) -> None:
                sent = now()
                await inner(transport, topic, messages)
                confirmed = now()
                for message in messages:
                    n = number.get(message.message_id)
                    if n is not None:
                        calls.add(n, entered_at[message.message_id], sent, confirmed)

            transport_class.publish = timed
            transport_class._traced = True
        return await publish(self, *facts, ancestors=ancestors)

    Bus.publish = traced_publish  # type: ignore[method-assign]

    try:
        from factbus_kafka import transport as kafka_transport
    except ImportError:  # pragma: no cover
        kafka_transport = None
    if kafka_transport is not None:
        report = kafka_transport._Confirmations.report

        def traced_report(self: Any, error: Any, message: Any) -> None:
            key = message.key()
            n = number.get(key.decode()) if key else None
            if n is not None:
                reports.add(n, now())
            report(self, error, message)

        kafka_transport._Confirmations.report = traced_report  # type: ignore[method-assign]

    share = bench_publisher.publish_share

    async def traced_share(
        bus: Any, workload: Any, job: Any, publisher: int, publishers: int
    ) -> Any:
        del calls.data[:]
        del reports.data[:]
        del collections.data[:]
        tracked = len(gc.get_objects())
        report = await share(bus, workload, job, publisher, publishers)
        if job.rate:
            path = trace_dir / f"publisher-{os.getpid()}-{time.time_ns()}.pickle"
            path.write_bytes(
                pickle.dumps(
                    {
                        "calls": calls.data.tobytes(),
                        "stamps": report.stamps.tobytes(),
                        "reports": reports.data.tobytes(),
                        "cores": report.cpu_s / max(report.end - report.start, 1e-9),
                        "collections": collections.data.tobytes(),
                        "tracked": tracked,
                    }
                )
            )
        return report

    bench_publisher.publish_share = traced_share
    _original_child_main(*args)


_original_child_main = bench_publisher._child_main


def _install_task_publisher_hooks(trace_dir: Path) -> None:
    """memory:// (publishers are tasks of the consuming process): keep each paced
    phase's stamps as the publisher processes' hook does. A fact arrives when its
    publish call puts it in the queue, which the stamp is (a few µs before)."""
    share = bench_publisher.publish_share

    async def traced_share(
        bus: Any, workload: Any, job: Any, publisher: int, publishers: int
    ) -> Any:
        report = await share(bus, workload, job, publisher, publishers)
        if job.rate:
            TRACE.arrived = array("d", report.stamps)
            path = trace_dir / f"publisher-{os.getpid()}-{time.time_ns()}.pickle"
            path.write_bytes(
                pickle.dumps(
                    {
                        "calls": b"",
                        "stamps": report.stamps.tobytes(),
                        "cores": report.cpu_s / max(report.end - report.start, 1e-9),
                    }
                )
            )
        return report

    bench_publisher.publish_share = traced_share


# -- the analysis ---------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(pct(values, 0.5), 2),
        "p99": round(pct(values, 0.99), 2),
        "max": round(max(values), 2) if values else 0.0,
        "n": len(values),
    }


def analyse(trace_dir: Path, slow_ms: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The per-fact segments and the process's events over the traced phase."""
    trace = TRACE
    phase_start, _run, facts = trace.begins[2]
    [pub_file] = sorted(trace_dir.glob("publisher-*.pickle"))[-1:]
    pub = pickle.loads(pub_file.read_bytes())
    stamps = array("d")
    stamps.frombytes(pub["stamps"])
    calls = Rows(4)
    calls.data.frombytes(pub["calls"])
    entered = array("d", bytes(8 * facts))
    sent = array("d", bytes(8 * facts))
    confirmed = array("d", bytes(8 * facts))
    for n, enter, send, confirm in calls:
        entered[int(n)], sent[int(n)], confirmed[int(n)] = enter, send, confirm
    reported = array("d", bytes(8 * facts))
    report_rows = Rows(2)
    report_rows.data.frombytes(pub.get("reports", b""))
    for n, t in report_rows:
        reported[int(n)] = t
    steps = list(trace.steps)
    ms = 1e3
    rows = []
    for n in range(facts):
        index = trace.step_of[n]
        if not (stamps[n] and trace.handled[n] and trace.arrived[n] and index >= 0):
            continue
        s = steps[index]
        arrived = trace.arrived[n]
        rows.append(
            {
                "n": n,
                "latency": (trace.handled[n] - stamps[n]) * ms,
                "stamp_to_call": (entered[n] - stamps[n]) * ms if entered[n] else None,
                "call_to_send": (sent[n] - entered[n]) * ms if sent[n] else None,
                "confirm": (confirmed[n] - stamps[n]) * ms if confirmed[n] else None,
                "send_to_arrival": (arrived - sent[n]) * ms if sent[n] else None,
                "send_to_report": (reported[n] - sent[n]) * ms if sent[n] and reported[n] else None,
                "send_to_taken": (trace.taken[n] - sent[n]) * ms
                if sent[n] and trace.taken[n]
                else None,
                "taken_to_arrival": (arrived - trace.taken[n]) * ms if trace.taken[n] else None,
                "publish_to_arrival": (arrived - stamps[n]) * ms,
                "arrival_to_step": (s[0] - arrived) * ms,
                "step_to_handled": (trace.handled[n] - s[0]) * ms,
                "consumer": (trace.handled[n] - arrived) * ms,
                "step_size": s[2],
                "step_ms": (s[1] - s[0]) * ms,
                "arrived": arrived,
                "stamp": stamps[n],
                "step": index,
            }
        )
    end = max(trace.handled)
    window = (phase_start, end)

    def within(rows_: Rows) -> list[tuple[float, ...]]:
        return [e for e in rows_ if e[1] >= window[0] and e[0] <= window[1]]

    slow = [r for r in rows if r["latency"] > slow_ms]
    keys = (
        "latency",
        "stamp_to_call",
        "call_to_send",
        "send_to_arrival",
        "send_to_report",
        "send_to_taken",
        "taken_to_arrival",
        "confirm",
        "publish_to_arrival",
        "arrival_to_step",
        "step_to_handled",
        "consumer",
        "step_ms",
        "step_size",
    )
    phase_steps = within(trace.steps)
    # Loop-thread CPU per step against its size: a least-squares line (fixed ms
    # per step, µs per delivery), and the share of a core the fixed part took.
    sizes = [e[2] for e in phase_steps]
    cpus = [e[7] * ms for e in phase_steps]
    step_fit: dict[str, float] = {}
    if len(sizes) > 2:
        mean_x, mean_y = sum(sizes) / len(sizes), sum(cpus) / len(cpus)
        var = sum((x - mean_x) ** 2 for x in sizes)
        if var:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, cpus, strict=True)) / var
            fixed = mean_y - slope * mean_x
            step_fit = {
                "fixed_ms_per_step": round(fixed, 3),
                "us_per_delivery": round(slope * 1e3, 2),
                "steps_per_s": round(len(sizes) / max(end - phase_start, 1e-9), 1),
                "loop_cpu_ms": round(sum(cpus), 1),
            }
    arrivals = sorted(t for t in trace.arrived if t)
    gaps = sorted((((b - a) * ms, a) for a, b in itertools.pairwise(arrivals)), reverse=True)
    stamp_times = sorted(s for s in stamps if s)
    stamp_gaps = sorted(
        (((b - a) * ms, a) for a, b in itertools.pairwise(stamp_times)),
        reverse=True,
    )
    # The tail: of the facts at or above the p99 latency, where their time went.
    p99 = pct([r["latency"] for r in rows], 0.99)
    tail = [r for r in rows if r["latency"] >= p99]
    tail_overlap = _tail_overlap(tail, window)
    tail_split = {
        "overlap_ms": tail_overlap,
        "p99_ms": round(p99, 1),
        "facts": len(tail),
        "mostly_before_arrival": sum(1 for r in tail if r["publish_to_arrival"] > r["consumer"]),
        "mostly_in_consumer": sum(1 for r in tail if r["publish_to_arrival"] <= r["consumer"]),
        "publish_to_arrival_ms": _summary([r["publish_to_arrival"] for r in tail]),
        "consumer_ms": _summary([r["consumer"] for r in tail]),
        "segments_ms": {k: _summary([r[k] for r in tail if r[k] is not None]) for k in keys},
    }
    buckets: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault(int((r["stamp"] - phase_start) / 0.5), []).append(r)
    series = [
        {
            "t_s": k * 0.5,
            "published": len(v),
            "latency_p50": round(pct([r["latency"] for r in v], 0.5), 1),
            "latency_max": round(max(r["latency"] for r in v), 1),
            "publish_to_arrival_p50": round(pct([r["publish_to_arrival"] for r in v], 0.5), 1),
            "confirm_p50": round(pct([r["confirm"] or 0.0 for r in v], 0.5), 1),
        }
        for k, v in sorted(buckets.items())
    ]
    gcs = within(trace.gcs)
    a, b = trace.cpu_at_begin, trace.cpu_at_end
    cpu: dict[str, Any] = {}
    if a and b:
        seconds = b["t"] - a["t"]
        total = b["total"] - a["total"]
        cpu = {
            "seconds": round(seconds, 3),
            "machine_busy": round(1 - (b["idle"] - a["idle"]) / total, 3) if total else None,
            "broker_cores": round((b["broker_cpu_s"] - a["broker_cpu_s"]) / seconds, 3),
            "consumer_cores": round((b["on_cpu_ns"] - a["on_cpu_ns"]) / 1e9 / seconds, 3),
            "consumer_threads_cores": {
                name: round((ns - a["threads"].get(name, 0.0)) / 1e9 / seconds, 3)
                for name, ns in sorted(b["threads"].items())
                if ns - a["threads"].get(name, 0.0) > 1e6
            },
            "consumer_runnable_waiting_cores": round(
                (b["waiting_ns"] - a["waiting_ns"]) / 1e9 / seconds, 3
            ),
        }
    cpu["publisher_cores"] = round(pub.get("cores", 0.0), 3)
    pub_gcs = Rows(3)
    pub_gcs.data.frombytes(pub.get("collections", b""))
    publisher_gc = {
        "tracked_objects": pub.get("tracked", 0),
        "gen2_ms": [round((g[1] - g[0]) * 1e3, 1) for g in pub_gcs if g[2] == 2],
        "gen1_over_5ms": [
            round((g[1] - g[0]) * 1e3, 1) for g in pub_gcs if g[2] == 1 and g[1] - g[0] > 0.005
        ],
    }
    report = {
        "cpu": cpu,
        "publisher_gc": publisher_gc,
        "facts": facts,
        "traced": len(rows),
        "segments_ms": {k: _summary([r[k] for r in rows if r[k] is not None]) for k in keys},
        "slow_threshold_ms": slow_ms,
        "slow_facts": len(slow),
        "slow_segments_ms": {k: _summary([r[k] for r in slow if r[k] is not None]) for k in keys},
        "tail": tail_split,
        "full_collections_at_phase_start": [
            {"tracked": c[0], "wall_ms": round(c[1], 1), "cpu_ms": round(c[2], 1)}
            for c in trace.collections
        ],
        "series": series,
        "phase": {
            "seconds": round(end - phase_start, 2),
            "steps": len(phase_steps),
            "step_ms": _summary([(e[1] - e[0]) * ms for e in phase_steps]),
            "step_size": _summary([e[2] for e in phase_steps]),
            "step_cpu_fit": step_fit,
            "gc_gen1_2_ms": sorted(
                ((round((g[1] - g[0]) * ms, 1), int(g[2])) for g in gcs if g[2] >= 1),
                reverse=True,
            )[:20],
            "gc_counts": [sum(1 for g in gcs if g[2] == k) for k in range(3)],
            "commits_ms": _summary([(c[1] - c[0]) * ms for c in within(trace.commits)]),
            "commits_over_5ms": sorted(
                (
                    round((c[1] - c[0]) * ms, 1)
                    for c in within(trace.commits)
                    if c[1] - c[0] > 0.005
                ),
                reverse=True,
            ),
            "store_idle_waits_ms": sorted(
                (round((c[1] - c[0]) * ms, 1) for c in within(trace.idle_waits)), reverse=True
            )[:10],
            "checkpoints_ms": sorted(
                (
                    (round((c[1] - c[0]) * ms, 1), "loop" if c[2] else "worker")
                    for c in within(trace.checkpoints)
                ),
                reverse=True,
            )[:10],
            "loop_held_over_4ms": sorted(
                ((round((t[1] - t[0]) * ms, 1), round(t[2] * ms, 1)) for t in within(trace.ticks)),
                reverse=True,
            )[:20],
            "kafka_pauses": sum(1 for p in trace.pauses if p[1] and window[0] <= p[0] <= window[1]),
            "loop_held_total_ms": round(sum(t[1] - t[0] for t in within(trace.ticks)) * ms),
            "loop_held_cpu_ms": round(sum(t[2] for t in within(trace.ticks)) * ms),
            "arrival_gaps_ms": [(round(g, 1), round(t - phase_start, 3)) for g, t in gaps[:15]],
            "stamp_gaps_ms": [(round(g, 1), round(t - phase_start, 3)) for g, t in stamp_gaps[:15]],
        },
    }
    return report, rows


def _tail_overlap(tail: list[dict[str, Any]], window: tuple[float, float]) -> dict[str, float]:
    """For the facts at or above the p99: the mean ms of each one's wait (its
    publish stamp to its handler call) that each kind of event overlapped. A
    late tick's span counts as the loop busy for the loop thread's CPU
    meanwhile, the rest as the loop thread off a CPU (waiting for a core or
    the GIL)."""
    trace = TRACE
    kinds: dict[str, list[tuple[float, float]]] = {
        "gc_gen2": [(g[0], g[1]) for g in trace.gcs if g[2] == 2],
        "gc_gen0_1": [(g[0], g[1]) for g in trace.gcs if g[2] < 2],
        "store_waits_writer": [(a, b) for a, b in trace.idle_waits],
        "commit": [(c[0], c[1]) for c in trace.commits],
        "checkpoint_running": [(c[0], c[1]) for c in trace.checkpoints],
        "loop_held_on_cpu": [(t[0], t[0] + t[2]) for t in trace.ticks],
        "loop_held_off_cpu": [(t[0] + t[2], t[1]) for t in trace.ticks if t[1] - t[0] > t[2]],
    }
    out: dict[str, float] = {}
    if not tail:
        return out
    for kind, spans in kinds.items():
        spans = sorted(s for s in spans if s[1] >= window[0] - 1 and s[0] <= window[1] + 1)
        total = 0.0
        for r in tail:
            lo = r["stamp"]
            hi = lo + r["latency"] / 1e3
            total += sum(max(0.0, min(hi, b) - max(lo, a)) for a, b in spans)
        out[kind] = round(total / len(tail) * 1e3, 2)
    out["wait"] = round(sum(r["latency"] for r in tail) / len(tail), 2)
    return out


def _timeline(around: float, before: float, after: float) -> list[str]:
    """The process's events from ``before`` s before ``around`` to ``after`` s after."""
    trace = TRACE
    lo, hi = around - before, around + after
    lines: list[tuple[float, str]] = []
    for s in trace.steps:
        if lo < s[0] < hi:
            extra = ""
            if s[3] and s[4] and s[5]:
                extra = (
                    f" (decode {(s[3] - s[0]) * 1e3:.1f}, to commit {(s[4] - s[3]) * 1e3:.1f},"
                    f" commit {(s[5] - s[4]) * 1e3:.1f} ms)"
                )
            lines.append(
                (s[0], f"step #{int(s[6])} of {int(s[2])}: {(s[1] - s[0]) * 1e3:.1f} ms{extra}")
            )
    for c in trace.commits:
        if lo < c[0] < hi and c[1] - c[0] > 0.002:
            lines.append((c[0], f"COMMIT {(c[1] - c[0]) * 1e3:.1f} ms"))
    for g in trace.gcs:
        if lo < g[0] < hi and (g[2] >= 1 or g[1] - g[0] > 0.002):
            lines.append((g[0], f"gc gen{int(g[2])} {(g[1] - g[0]) * 1e3:.1f} ms"))
    delivered = [(t, c) for t, c in trace.delivers if lo < t < hi]
    # Deliveries: one line per run of them with no other event between.
    for t, count in delivered:
        lines.append((t, f"deliver {int(count)}"))
    for t, count in trace.thread:
        if lo < t < hi:
            lines.append((t, f"kafka thread hands on {int(count)}"))
    for t, paused in trace.pauses:
        if lo < t < hi:
            lines.append((t, "kafka thread pauses fetching" if paused else "kafka thread resumes"))
    for a, b, count in trace.acks:
        if lo < a < hi:
            lines.append((a, f"acks: {int(count)} sent in {(b - a) * 1e3:.1f} ms"))
    for due, woke, cpu in trace.ticks:
        if lo < due < hi:
            lines.append(
                (due, f"loop held {(woke - due) * 1e3:.1f} ms (its CPU {cpu * 1e3:.1f} ms)")
            )
    for a, b in trace.idle_waits:
        if lo < a < hi:
            lines.append((a, f"store waits {(b - a) * 1e3:.1f} ms for its writer thread"))
    for c in trace.checkpoints:
        if lo < c[0] < hi:
            where = "loop" if c[2] else "worker"
            lines.append((c[0], f"checkpoint ({where}) {(c[1] - c[0]) * 1e3:.1f} ms"))
    lines.sort()
    merged: list[str] = []
    run_start, run_count, last_t = 0.0, 0, 0.0
    for t, text in lines:
        if text.startswith("deliver "):
            if not run_count:
                run_start = t
            run_count += int(text.split()[1])
            last_t = t
            continue
        if run_count:
            merged.append(
                f"{(run_start - around) * 1e3:+8.1f} .. {(last_t - around) * 1e3:+.1f} ms"
                f"  {run_count} deliveries arrive"
            )
            run_count = 0
        merged.append(f"{(t - around) * 1e3:+8.1f} ms  {text}")
    if run_count:
        merged.append(
            f"{(run_start - around) * 1e3:+8.1f} .. {(last_t - around) * 1e3:+.1f} ms"
            f"  {run_count} deliveries arrive"
        )
    return merged


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transport", required=True)
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--publish-batch", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--store", default="")
    parser.add_argument("--slow-ms", type=float, default=20.0)
    parser.add_argument("--json", default="")
    parser.add_argument("--timeline", type=int, default=3, help="stalls to print in full")
    parser.add_argument(
        "--commit-on-loop",
        action="store_true",
        help="do the SQLite store's writer-thread work in place, on the event-loop "
        "thread: with a ?commit_thread=1 store, its COMMITs (an A/B of the thread)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="publish the half-load phase at this many msgs/s instead of half of "
        "the run's peak (the same pacing; to compare runs at one rate)",
    )
    parser.add_argument(
        "--no-collect",
        action="store_true",
        help="no full collection at each phase's start (it resets the collector's "
        "counts: without it the collector paces itself as in the bench)",
    )
    args = parser.parse_args()
    global COLLECT_AT_PHASE_START
    COLLECT_AT_PHASE_START = not args.no_collect
    if args.rate:
        _fixed_half_rate(args.rate)
    if args.commit_on_loop:
        _commit_on_loop()
    trace_dir = Path(tempfile.mkdtemp(prefix="factbus-trace-"))
    os.environ["FACTBUS_TRACE_DIR"] = str(trace_dir)
    _install_consumer_hooks()
    bench_publisher._child_main = traced_child_main  # the publisher processes' target
    if args.transport.startswith("memory:"):
        _install_task_publisher_hooks(trace_dir)
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(stop))
    config = BenchConfig(
        transport=args.transport,
        store=args.store,
        facts=args.facts,
        warmup=args.warmup,
        publish_batch=args.publish_batch,
        batch_size=args.batch_size,
        baseline=False,
        drain=False,
    )
    result = await run_bench(config)
    stop.set()
    await ticker
    half = result.half_load
    assert half is not None
    report, rows = analyse(trace_dir, args.slow_ms)
    report["bench"] = {
        "peak_msgs_per_s": round(result.messages_per_s, 1),
        "half_target_per_s": half.target_per_s,
        "half_latency_ms": {"p50": half.latency_ms.p50, "p99": half.latency_ms.p99},
        "publish_lag_p99_ms": half.publish_lag_p99_ms,
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(report, indent=1))
    worst = sorted(rows, key=lambda r: -r["latency"])
    shown: list[float] = []
    timelines = []
    for r in worst:
        if len(shown) >= args.timeline:
            break
        if any(abs(r["arrived"] - t) < 0.3 for t in shown):
            continue
        shown.append(r["arrived"])
        head = (
            f"fact {r['n']}: {r['latency']:.1f} ms (publish->arrival "
            f"{r['publish_to_arrival']:.1f}, arrival->step {r['arrival_to_step']:.1f}, "
            f"step->handled {r['step_to_handled']:.1f}); times from its publish stamp"
        )
        lines = _timeline(r["stamp"], 0.15, r["latency"] / 1e3 + 0.02)
        timelines.append({"head": head, "lines": lines})
        print(f"\n== {head}")
        print("\n".join(lines))
    if args.json:
        report["timelines"] = timelines
        Path(args.json).write_text(json.dumps(report, indent=1))  # noqa: ASYNC240


if __name__ == "__main__":
    asyncio.run(main())
