"""The consuming process's CPU per message draining a backlog, per thread: Kafka
against memory://, same bodies, same pipeline, same store.

For each round and each ``--transport``: a publisher bus (memory store) puts
``--facts`` independent facts (100 bytes of payload, the bench's workload) on
a fresh topic in calls of 1,000; then a new consuming bus (``--store``: a
fresh SQLite file, or ``memory://``; batch size 512, one trivial sync handler
per type) drains it. The window runs from ``Bus.start()``'s return (on Kafka:
partitions assigned) to the handler seeing the last fact (no polling: an
event set by the handler). Reported per drain: messages/s, CPU µs per message
of the whole process and of each kind of thread (``/proc/self/task/*/schedstat``:
nanoseconds on a CPU), the loop thread's time waiting for a CPU (run-queue
delay, a sign of an oversubscribed machine), pipeline steps and their mean
size, thread hand-offs (``KafkaSubscription._receive`` calls, when the adapter
has one) and garbage collections by generation, with the CPU time they took
(``gc.callbacks``, whichever thread collected). The workload's 100,000 facts
live in this process for the whole study; they are frozen (``gc.freeze()``)
once built, so that a full collection costs what the consuming path's own
objects make it cost (``--keep-workload-young``: not frozen).

Thread kinds: ``loop`` (the event loop, the main thread), ``rdk`` (librdkafka's
own threads), ``kafka`` (the subscription's consumer thread and the producer's
poller, ``factbus-kafka-*``), ``other`` (executor threads: the SQLite store's
checkpoints).

``--batch-size N`` sets the consuming bus's batch size (default 512, the
bench's), e.g. to see what a step costs beyond its messages.

``--pyspy PATH`` also samples the process with py-spy over the first round's
Kafka window (``--threads --format raw``, 500 Hz; py-spy must be installed):
collapsed stacks per thread, for a profile of the window alone.

The figures depend on whichever ``factbus`` is importable, so an A/B of two
trees runs this script twice with ``PYTHONPATH=<tree>/src:<tree>/adapters``.

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/kafka_drain_cost.py --facts 100000 --rounds 3 \\
        --transport kafka://127.0.0.1:9092 --transport memory:// [--store memory://]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any

from _common import thread_schedstats

from factbus import Bus, pipeline
from factbus.bench.runner import FACT_TYPES
from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.fact import Fact
from factbus.transport.memory import MemoryTransport

KINDS = ("loop", "rdk", "kafka", "other")
BATCH_SIZE = [512]
"""The consuming bus's ``batch_size`` (``--batch-size``)."""


def _threads() -> dict[int, tuple[str, int, int]]:
    """tid -> (kind, ns on a CPU, ns waiting for a CPU) of this process's threads."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main = threading.main_thread().native_id
    result: dict[int, tuple[str, int, int]] = {}
    for tid, (comm, on_cpu, waiting) in thread_schedstats().items():
        if tid == main:
            kind = "loop"
        elif comm.startswith("rdk:"):
            kind = "rdk"
        elif names.get(tid, "").startswith("factbus-kafka"):
            kind = "kafka"
        else:
            kind = "other"
        result[tid] = (kind, on_cpu, waiting)
    return result


def _split(
    before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]]
) -> tuple[dict[str, float], float]:
    """CPU seconds by thread kind between two samples, and the loop's wait for a CPU.
    Threads that ended in between are lost (none should: the window ends before
    the consuming bus closes)."""
    cpu = dict.fromkeys(KINDS, 0.0)
    wait = 0.0
    for tid, (kind, on_cpu, waiting) in after.items():
        _, on_cpu0, waiting0 = before.get(tid, (kind, 0, 0))
        cpu[kind] += (on_cpu - on_cpu0) / 1e9
        if kind == "loop":
            wait = (waiting - waiting0) / 1e9
    return cpu, wait


class _Counters:
    """Hand-offs and collections, counted by hooks installed once."""

    def __init__(self) -> None:
        self.handoffs = 0
        self.handoff_cpu = 0.0
        self.step_cpu = 0.0
        self.collections: collections.Counter[int] = collections.Counter()
        self.by_thread: collections.Counter[str] = collections.Counter()
        """Collections per ``"<loop|thread>:<generation>"``: who made the allocation
        that triggered each one."""
        self.gc_cpu: dict[int, float] = dict.fromkeys(range(3), 0.0)
        self._started = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.collections[info["generation"]] += 1
            who = "loop" if threading.current_thread() is threading.main_thread() else "thread"
            self.by_thread[f"{who}:{info['generation']}"] += 1
            self.gc_cpu[info["generation"]] += time.thread_time() - self._started


COUNTERS = _Counters()


def _install() -> None:
    gc.callbacks.append(COUNTERS.on_gc)
    step = pipeline.Pipeline.step

    async def timed_step(self: pipeline.Pipeline, deliveries: Any) -> None:
        started = time.thread_time()
        try:
            await step(self, deliveries)
        finally:
            COUNTERS.step_cpu += time.thread_time() - started

    pipeline.Pipeline.step = timed_step  # type: ignore[method-assign]
    try:
        from factbus_kafka import subscription
    except ImportError:
        return
    receive = getattr(subscription.KafkaSubscription, "_receive", None)
    if receive is None:
        return

    def counted(self: Any, *args: Any) -> Any:
        COUNTERS.handoffs += 1
        started = time.thread_time()
        try:
            return receive(self, *args)
        finally:
            COUNTERS.handoff_cpu += time.thread_time() - started

    subscription.KafkaSubscription._receive = counted  # type: ignore[method-assign,assignment]


async def drain_once(
    transport: str, store: str, facts: list[Fact], pyspy: str | None
) -> dict[str, Any]:
    """One backlog published, then drained by a new bus; its figures."""
    run = uuid.uuid4().hex[:8]
    topic = f"study-drain-{run}"
    node = f"study-drain-{run}"
    if transport.startswith("memory://"):
        transport = f"memory://study-drain-{run}"
        holder = MemoryTransport(transport)
        await holder.connect()
        await (await holder.subscribe(topic, node)).aclose()
    async with Bus(transport, "memory://", topic=topic, node=f"{node}-pub", consume=False) as pub:
        for at in range(0, len(facts), 1000):
            await pub.publish(*facts[at : at + 1000], ancestors=False)
    tmp = tempfile.mkdtemp(prefix="study-drain-")
    store_url = f"sqlite:///{tmp}/drain.db" if store == "sqlite" else store
    done = asyncio.Event()
    seen = 0
    total = len(facts)

    def handler(fact: Fact) -> None:
        nonlocal seen
        seen += 1
        if seen >= total:
            done.set()

    bus = Bus(transport, store_url, topic=topic, node=node, batch_size=BATCH_SIZE[0])
    for fact_type in FACT_TYPES:
        bus.handler(fact_type)(handler)
    spy: subprocess.Popen[bytes] | None = None
    try:
        await bus.start()
        if pyspy:
            command = ["py-spy", "record", "--pid", str(os.getpid()), "--threads"]
            spy = subprocess.Popen(  # noqa: ASYNC220 - started once, before the window
                [*command, "--format", "raw", "-r", "500", "-o", pyspy],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(0.5)  # py-spy attaches
        handoffs, gcs = COUNTERS.handoffs, COUNTERS.collections.copy()
        by_thread = COUNTERS.by_thread.copy()
        handoff_cpu, gc_cpu = COUNTERS.handoff_cpu, COUNTERS.gc_cpu.copy()
        step_cpu = COUNTERS.step_cpu
        threads, cpu0, start = _threads(), time.process_time(), time.perf_counter()
        await asyncio.wait_for(done.wait(), 300)
        end, cpu1, threads1 = time.perf_counter(), time.process_time(), _threads()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
        steps = bus.stats.steps
    finally:
        await bus.aclose()
        if spy is not None:
            spy.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    split, wait = _split(threads, threads1)
    per = 1e6 / total
    collections_ = {g: COUNTERS.collections[g] - gcs[g] for g in range(3)}
    return {
        "transport": transport.split("://")[0],
        "store": store,
        "messages": total,
        "seconds": end - start,
        "msgs_per_s": total / (end - start),
        "cpu_us_per_msg": (cpu1 - cpu0) * per,
        "threads_us_per_msg": {k: v * per for k, v in split.items()},
        "loop_wait_share": wait / (end - start),
        "steps": steps,
        "handoffs": COUNTERS.handoffs - handoffs,
        "handoff_us_per_msg": (COUNTERS.handoff_cpu - handoff_cpu) * per,
        "step_us_per_msg": (COUNTERS.step_cpu - step_cpu) * per,
        "gc_us_per_msg": [(COUNTERS.gc_cpu[g] - gc_cpu[g]) * per for g in range(3)],
        "collections": collections_,
        "collections_by_thread": dict(sorted((COUNTERS.by_thread - by_thread).items())),
        "load": os.getloadavg(),
    }


def _line(r: dict[str, Any]) -> str:
    t = r["threads_us_per_msg"]
    return (
        f"{r['transport']:7s} {r['store']:7s} {r['msgs_per_s']:9,.0f} msgs/s  "
        f"CPU µs/msg {r['cpu_us_per_msg']:5.2f} = loop {t['loop']:5.2f} rdk {t['rdk']:4.2f} "
        f"kafka {t['kafka']:4.2f} other {t['other']:4.2f} (steps {r['step_us_per_msg']:.2f}); "
        "loop waits for a CPU "
        f"{r['loop_wait_share']:.0%}; steps {r['steps']} (mean "
        f"{r['messages'] / max(r['steps'], 1):.0f}), hand-offs {r['handoffs']} "
        f"({r['handoff_us_per_msg']:.2f} µs/msg), gc {r['collections'][0]}/"
        f"{r['collections'][1]}/{r['collections'][2]} "
        f"({'/'.join(f'{x:.2f}' for x in r['gc_us_per_msg'])} µs/msg; "
        f"{' '.join(f'{k}={v}' for k, v in r['collections_by_thread'].items())}); "
        f"load {r['load'][0]:.1f}"
    )


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    workload = build_workload(WorkloadSpec(facts=args.facts))
    facts = workload.order
    if not args.keep_workload_young:
        # The workload's facts are this study's, not the consuming path's: keep
        # the collector's full collections from walking them (see the docstring).
        gc.collect()
        gc.freeze()
    results: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for transport in args.transport:
            pyspy = args.pyspy if round_ == 0 and transport.startswith("kafka") else None
            result = await drain_once(transport, args.store, facts, pyspy)
            result["round"] = round_
            results.append(result)
            print(_line(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", action="append")
    parser.add_argument("--store", default="sqlite", help="sqlite (a fresh file) or memory://")
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--pyspy", help="py-spy's collapsed stacks of the first Kafka drain")
    parser.add_argument("--json", help="write every drain's figures here")
    parser.add_argument(
        "--keep-workload-young",
        action="store_true",
        help="do not freeze the workload's facts (full collections then walk them)",
    )
    args = parser.parse_args()
    args.transport = args.transport or ["kafka://127.0.0.1:9092", "memory://"]
    BATCH_SIZE[0] = args.batch_size
    _install()
    results = asyncio.run(main_async(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
