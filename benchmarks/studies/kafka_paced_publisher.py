"""The bench's half-load publisher alone: CPU per message and confirm times at a paced rate.

Runs :func:`factbus.bench.publisher.publish_share` with a ``rate`` (the
half-load phase's pacing: a call every millisecond or so with every message
due by then, calls not waiting for each other) on a publish-only
:class:`~factbus.Bus` in this process, against ``--transport``, and reports
the process's CPU µs per message, the calls made, how late they were
(``lag_p99_ms``) and, with ``--profile F.prof``, a cProfile of the phase.
Nothing consumes; the topic is a fresh one per round.
``--url-suffix`` variants (``&producer.linger.ms=5`` ...) alternate by round.

Run (brokers up)::

    .venv/bin/python benchmarks/studies/kafka_paced_publisher.py --rate 40000 \\
        --facts 50000 --rounds 3 --variant '' --variant '?producer.linger.ms=5'
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import time
import uuid

from factbus import Bus
from factbus.bench.publisher import PublishJob, publish_share
from factbus.bench.workload import WorkloadSpec, build_workload


def _loop_polling() -> None:
    """Experiment: no poller thread; the event loop polls the producer every ms."""
    from factbus_kafka import transport as kafka_transport

    def run(self: object) -> None:
        self._stop.wait()  # type: ignore[attr-defined]
        self.producer.flush(self._flush_timeout)  # type: ignore[attr-defined]
        self.producer.close()  # type: ignore[attr-defined]

    kafka_transport._ProducerThread._run = run  # type: ignore[method-assign]


async def _poll_task(bus: Bus) -> None:
    while True:
        thread = getattr(bus.transport, "_producer", None)
        if thread is not None:
            thread.producer.poll(0)
            # The reports only count; the poller settles the completed calls
            # after its poll round (PROFILE.md §17): do it here instead.
            if thread.settled:
                calls = thread.settled[:]
                thread.settled.clear()
                thread._hand_over(calls, None)
        await asyncio.sleep(0.001)


async def _delete(url: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

    from factbus_kafka.config import KafkaConfig

    admin = AdminClient(KafkaConfig.from_url(url.split("?")[0]).admin())
    for future in admin.delete_topics([topic]).values():
        await asyncio.to_thread(future.result, 30)


async def one(
    url: str, rate: float, facts: int, seed: int, profile: str, loop_poll: bool = False
) -> dict[str, object]:
    topic = f"paced-pub-{uuid.uuid4().hex[:8]}"
    bus = Bus(url, "memory://", topic=topic, node=f"{topic}-pub0", consume=False)
    await bus.start()
    poller = asyncio.create_task(_poll_task(bus)) if loop_poll else None
    spec = WorkloadSpec(facts=facts, seed=seed)
    workload = build_workload(spec)
    # Warm: the topic, the producer id.
    warm = build_workload(WorkloadSpec(facts=200, seed=seed + 1000))
    await publish_share(bus, warm, PublishJob(warm.spec, 100), 0, 1)
    job = PublishJob(spec, 1000, rate=rate or None, start_at=time.perf_counter() + 0.05)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    collections: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                collections.append((time.perf_counter() - started[0]) * 1e3)

    gc.callbacks.append(on_gc)
    thread_cpu = time.thread_time()
    report = await publish_share(bus, workload, job, 0, 1)
    thread_cpu = time.thread_time() - thread_cpu
    gc.callbacks.remove(on_gc)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    if poller:
        poller.cancel()
    await bus.aclose()
    seconds = report.end - report.start
    return {
        "achieved_per_s": round(report.messages / seconds),
        "cpu_us_per_msg": round(report.cpu_s / report.messages * 1e6, 2),
        "cores": round(report.cpu_s / seconds, 3),
        "loop_thread_cores": round(thread_cpu / seconds, 3),
        "lag_p99_ms": report.lag_p99_ms,
        "tracked_objects": len(gc.get_objects()),
        "gen2_collections_ms": [round(ms, 1) for ms in collections],
        "load_avg": os.getloadavg(),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transport", default="kafka://127.0.0.1:9092")
    parser.add_argument("--rate", type=float, default=40_000, help="0: unpaced, calls of 1000")
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--profile", default="")
    parser.add_argument("--loop-poll", action="store_true")
    args = parser.parse_args()
    if args.loop_poll:
        _loop_polling()
    for r in range(args.rounds):
        for suffix in args.variant or [""]:
            result = await one(
                args.transport + suffix, args.rate, args.facts, r + 1, args.profile, args.loop_poll
            )
            print(json.dumps({"round": r, "variant": suffix, **result}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
