"""What ``Bus.publish`` costs per message once its published-refs bookkeeping is full.

``kafka_publish_cost.py`` publishes the same 20,000 facts round after round, so
its ``Bus.publish`` rows never insert a new ref. A real publisher (and the
bench's, which publishes ~150,000 distinct facts over its phases) does: each
new ref goes into the recent-published cache (``handled_cache`` refs, the
oldest dropped) and into the store's record. This study publishes
``--facts`` distinct facts (the bench's workload: independent, 100 B of
payload, wire bytes computed beforehand) in calls of ``--batch`` through a
``Bus`` whose transport's ``publish`` does nothing, with the bench
publisher's memory store (or ``--store URL``), and prints the process CPU µs
per message of each window of ``--window`` facts: the later windows are the
steady state (the cache full, the store's record large).

Run::

    .venv/bin/python benchmarks/studies/publish_bookkeeping.py
    .venv/bin/python benchmarks/studies/publish_bookkeeping.py --store sqlite:////tmp/pb.db
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.bus import Bus
from factbus.transport.base import Message
from factbus.transport.memory import MemoryTransport


class _Idle(MemoryTransport):
    """A memory:// transport whose ``publish`` does nothing: ``Bus.publish``'s own cost."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=160_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    workload = build_workload(WorkloadSpec(args.facts))
    facts = workload.order
    _ = workload.bodies  # wire bytes computed, as the bench's raw phase leaves them
    bus = Bus(_Idle("memory://study-idle"), args.store, topic="t", node="study", consume=False)
    await bus.start()
    windows: list[float] = []
    try:
        for start in range(0, len(facts), args.window):
            window = facts[start : start + args.window]
            began = time.process_time()
            for at in range(0, len(window), args.batch):
                await bus.publish(*window[at : at + args.batch], ancestors=False)
            windows.append((time.process_time() - began) / len(window) * 1e6)
    finally:
        await bus.aclose()
    print(f"# {args.facts} distinct facts, calls of {args.batch}, store {args.store}")
    print("CPU µs/msg per window of", args.window, ":", " ".join(f"{w:.2f}" for w in windows))


if __name__ == "__main__":
    asyncio.run(main())
