"""Step sizes, and where the event-loop thread's CPU goes, at the Kafka peak.

Runs ``factbus bench`` in this process (``run_bench``: warm-up and peak only,
no baseline, half load or drain) with hooks that record, for every
``Pipeline.step``: its deliveries and the loop thread's CPU time inside it;
for every ``KafkaSubscription._receive`` (the thread hand-off's callback on
the loop): its CPU time; and every garbage collection (``gc.callbacks``: CPU
time of the collecting thread, by generation). The peak's window runs from
its first step's start to its last step's end, so building the next phase's
workload is left out. Per run it prints the step-size distribution, CPU per
step by size, and CPU µs per message in the window: the loop thread, the
whole process, the steps, the hand-offs, the collections.

``--gc-freeze`` freezes the collector's start-up objects first (as
``factbus worker`` and ``factbus bench --gc-freeze`` do).

Run (brokers up, ``eval "$(bash scripts/brokers.sh env)"``)::

    .venv/bin/python benchmarks/studies/kafka_steps.py --runs 2 [--gc-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import time
from typing import Any

from factbus import pipeline
from factbus.bench.runner import BenchConfig, run_bench
from factbus_kafka import subscription as kafka_subscription


class Probe:
    """The hooks (see the module docstring); one per run."""

    def __init__(self) -> None:
        self.phase = ""
        self.steps: list[tuple[str, int, float]] = []
        self.receive_cpu = 0.0
        self.receives = 0
        """Hand-offs (``_receive`` calls) in the peak's window."""
        self.receive_records = 0
        self.gc_cpu: collections.Counter[int] = collections.Counter()
        self.gc_count: collections.Counter[int] = collections.Counter()
        self._gc_start = 0.0
        self.window: dict[
            str, tuple[float, float, float, float, dict[int, float], dict[int, int]]
        ] = {}

    def mark(self) -> tuple[float, float, float, float, dict[int, float], dict[int, int]]:
        return (
            time.thread_time(),
            time.process_time(),
            self.receive_cpu,
            time.perf_counter(),
            dict(self.gc_cpu),
            dict(self.gc_count),
        )

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.thread_time()
        else:
            self.gc_cpu[info["generation"]] += time.thread_time() - self._gc_start
            self.gc_count[info["generation"]] += 1


CURRENT: list[Probe] = []
"""The probe of the run in progress (the hooks are installed once)."""


def install() -> None:
    step = pipeline.Pipeline.step
    receive = kafka_subscription.KafkaSubscription._receive

    async def timed_step(self: pipeline.Pipeline, deliveries: Any) -> None:
        probe = CURRENT[-1]
        peak = probe.phase == "peak"
        if peak and "first" not in probe.window:
            probe.window["first"] = probe.mark()
        started = time.thread_time()
        await step(self, deliveries)
        probe.steps.append((probe.phase, len(deliveries), time.thread_time() - started))
        if peak:
            probe.window["last"] = probe.mark()

    def timed_receive(self: Any, messages: Any) -> None:
        probe = CURRENT[-1]
        started = time.thread_time()
        receive(self, messages)
        probe.receive_cpu += time.thread_time() - started
        if probe.phase == "peak" and "first" in probe.window:
            probe.receives += 1
            probe.receive_records += len(messages)

    pipeline.Pipeline.step = timed_step  # type: ignore[method-assign]
    kafka_subscription.KafkaSubscription._receive = timed_receive  # type: ignore[method-assign]


class _Observer:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def phase(self, name: str, total: int) -> None:
        self.probe.phase = name

    def advance(self, name: str, done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def report(probe: Probe, messages: int) -> None:
    steps = [s for s in probe.steps if s[0] == "peak"]
    sizes = sorted(s[1] for s in steps)

    def q(p: float) -> int:
        return sizes[min(len(sizes) - 1, int(p * len(sizes)))]

    print(
        f"peak: {len(steps)} steps; size p10 {q(0.1)} p50 {q(0.5)} p90 {q(0.9)} "
        f"max {sizes[-1]} mean {sum(sizes) / len(steps):.1f}"
    )
    buckets: dict[int, list[float]] = collections.defaultdict(lambda: [0, 0, 0.0])
    for _, size, cpu in steps:
        bound = next(b for b in (2, 10, 50, 200, 10**9) if size < b)
        buckets[bound][0] += 1
        buckets[bound][1] += size
        buckets[bound][2] += cpu
    for bound, (count, msgs, cpu) in sorted(buckets.items()):
        print(
            f"  size < {bound}: {int(count)} steps, {int(msgs)} msgs, "
            f"{1e6 * cpu / count:.0f} CPU µs/step, {1e6 * cpu / msgs:.2f} µs/msg"
        )
    a, b = probe.window["first"], probe.window["last"]
    per = 1e6 / messages
    in_steps = sum(s[2] for s in steps)
    gc_window = {g: b[4].get(g, 0.0) - a[4].get(g, 0.0) for g in b[4]}
    print(
        f"  window {b[3] - a[3]:.2f}s; CPU µs/msg: loop thread {(b[0] - a[0]) * per:.2f} "
        f"(steps {in_steps * per:.2f}, hand-offs {(b[2] - a[2]) * per:.2f}), "
        f"process {(b[1] - a[1]) * per:.2f}; collections "
        + ", ".join(f"gen{g} {v * per:.2f}" for g, v in sorted(gc_window.items()))
    )
    print(
        "  collections in the window (gen: count): "
        f"{ {g: b[5].get(g, 0) - a[5].get(g, 0) for g in sorted(b[5])} }; "
        f"hand-offs from the first step on: {probe.receives} "
        f"({probe.receive_records / max(probe.receives, 1):.1f} records each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", default="kafka://127.0.0.1:9092")
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--gc-freeze", action="store_true")
    args = parser.parse_args()
    install()
    for _ in range(args.runs):
        probe = Probe()
        CURRENT.append(probe)
        gc.callbacks.append(probe.on_gc)
        config = BenchConfig(
            transport=args.transport,
            facts=args.facts,
            publish_batch=1000,
            warmup=2000,
            baseline=False,
            half_load=False,
            drain=False,
            gc_freeze=args.gc_freeze,
        )
        asyncio.run(run_bench(config, _Observer(probe)))
        report(probe, args.facts)
        gc.callbacks.remove(probe.on_gc)
        gc.unfreeze()


if __name__ == "__main__":
    main()
