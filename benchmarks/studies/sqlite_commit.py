"""The SQLite store's COMMIT in its writer thread against on the loop (PROFILE.md §10).

    .venv/bin/python benchmarks/studies/sqlite_commit.py [--facts 20000] [--repeats 5]
        [--growth-facts 200000]

Three measurements, independent facts of 100 B payload in steps of 512:

1. **Store cost**: per step, ``states()`` of the step's refs then one
   transaction recording them (``tx.record``), as the pipeline does: CPU µs
   per fact of the whole process (every thread), best of ``--repeats``.
2. **Pipeline drain**: :meth:`factbus.pipeline.Pipeline.step` over a backlog
   of envelopes (decode, dedup, dispatch to a plain handler, the store, the
   acks), memory store against SQLite: CPU µs per fact of the process and of
   the event-loop thread alone (the rest is the writer thread and the
   checkpoint worker), and wall µs per fact; best of ``--repeats``.
3. **COMMIT durations** over ``--growth-facts`` facts (wall ms in the thread
   that runs it), split by whether the worker's WAL checkpoint ran meanwhile,
   and the checkpoints' own durations.

Each SQLite figure twice: **thread** (``?commit_thread=1``: COMMIT in the
store's writer thread) and **loop** (the default: COMMIT on the event-loop
thread). Both variants run interleaved in one process, so the machine's load
hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _common import pct

from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.dispatcher import Dispatcher
from factbus.envelope import CodecLimits, decode
from factbus.fact import Fact
from factbus.pipeline import Pipeline
from factbus.store.base import StoreBatch
from factbus.store.memory import MemoryStore
from factbus.store.sqlite import SqliteStore

NAN = float("nan")
STEP = 512
VARIANTS: Mapping[str, str] = {"thread": "?commit_thread=1", "loop": ""}
"""SQLite URL option of each variant."""


class _Delivery:
    """A received message as the pipeline sees it (the backlog is in memory)."""

    __slots__ = ("body",)
    headers: Mapping[str, str] = {}
    redelivered = False

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def ack(self) -> None:
        pass

    async def nack(self, requeue: bool = True) -> None:
        pass


class _NoTransport:
    async def dead_letter(self, *args: Any) -> None:
        raise AssertionError("nothing is dead-lettered in this study")


async def store_cost(facts: list[Fact], url: str) -> float:
    store = SqliteStore(url)
    await store.open()
    start = time.process_time()
    for at in range(0, len(facts), STEP):
        chunk = facts[at : at + STEP]
        await store.states({f.ref for f in chunk})
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=chunk))
    cpu = time.process_time() - start
    await store.aclose()
    return cpu / len(facts) * 1e6


async def drain(bodies: list[bytes], types: set[str], url: str) -> tuple[float, float, float]:
    """(process CPU, loop-thread CPU, wall) µs per fact of a pipeline draining ``bodies``."""
    store: Any = MemoryStore() if url == "memory://" else SqliteStore(url)
    await store.open()
    dispatcher = Dispatcher()
    handled: list[Fact] = []
    for fact_type in types:
        dispatcher.register(fact_type, handled.append)
    pipeline = Pipeline(
        topic="study",
        transport=_NoTransport(),  # type: ignore[arg-type]
        store=store,
        dispatcher=dispatcher,
        limits=CodecLimits(),
    )
    steps = [[_Delivery(b) for b in bodies[at : at + STEP]] for at in range(0, len(bodies), STEP)]
    wall, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    for deliveries in steps:
        await pipeline.step(deliveries)  # type: ignore[arg-type]
    wall = time.perf_counter() - wall
    cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    await store.aclose()
    if len(handled) != len(bodies):
        raise AssertionError(f"handled {len(handled)} of {len(bodies)}")
    n = len(bodies)
    return cpu / n * 1e6, loop_cpu / n * 1e6, wall / n * 1e6


async def commit_durations(facts: list[Fact], path: Path) -> dict[str, list[float]]:
    """Wall ms of each COMMIT (alone / while the worker's checkpoint ran) and of
    each worker checkpoint, recording ``facts`` in steps."""
    out: dict[str, list[float]] = {"alone": [], "during checkpoint": [], "checkpoint": []}
    commit, checkpoint = SqliteStore._commit, SqliteStore._checkpoint

    def timed_commit(self: SqliteStore) -> None:
        busy = self._checkpoint_lock.locked()
        start = time.perf_counter()
        commit(self)
        busy = busy or self._checkpoint_lock.locked()
        out["during checkpoint" if busy else "alone"].append((time.perf_counter() - start) * 1e3)

    def timed_checkpoint(self: SqliteStore) -> None:
        start = time.perf_counter()
        checkpoint(self)
        out["checkpoint"].append((time.perf_counter() - start) * 1e3)

    SqliteStore._commit = timed_commit  # type: ignore[method-assign]
    SqliteStore._checkpoint = timed_checkpoint  # type: ignore[method-assign]
    try:
        store = SqliteStore(f"sqlite:///{path}")
        await store.open()
        for at in range(0, len(facts), STEP):
            chunk = facts[at : at + STEP]
            await store.states({f.ref for f in chunk})
            async with store.transaction() as tx:
                await tx.record(StoreBatch(handled=chunk))
        await store.aclose()
    finally:
        SqliteStore._commit = commit  # type: ignore[method-assign]
        SqliteStore._checkpoint = checkpoint  # type: ignore[method-assign]
    return out


async def main(facts_count: int, repeats: int, growth: int) -> None:
    bodies = build_workload(WorkloadSpec(facts_count, seed=7)).bodies
    facts = [f for body in bodies for f in decode(body)]
    types = {f.type for f in facts}
    with tempfile.TemporaryDirectory() as tmp:
        costs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        drains: dict[str, list[tuple[float, float, float]]] = {"memory": []}
        drains.update({v: [] for v in VARIANTS})
        for run in range(repeats):
            drains["memory"].append(await drain(bodies, types, "memory://"))
            for variant, option in VARIANTS.items():
                url = f"sqlite:///{Path(tmp) / f'c{variant}{run}.db'}{option}"
                costs[variant].append(await store_cost(facts, url))
                url = f"sqlite:///{Path(tmp) / f'd{variant}{run}.db'}{option}"
                drains[variant].append(await drain(bodies, types, url))
        print(f"{facts_count:,} facts, steps of {STEP}, best of {repeats}\n")
        print("| SQLite COMMIT | store cost CPU µs/fact (states + record + COMMIT) |")
        print("|---|---:|")
        for variant, values in costs.items():
            print(f"| {variant} | {min(values):.2f} |")
        print("\n| pipeline drain | CPU µs/fact (process) | of it the loop thread | wall µs/fact |")
        print("|---|---:|---:|---:|")
        for name, runs in drains.items():
            best = min(runs)
            label = "memory store" if name == "memory" else f"SQLite, COMMIT on the {name}"
            label = label.replace("on the thread", "in the writer thread")
            wall = statistics.median(r[2] for r in runs)
            print(f"| {label} | {best[0]:.2f} | {best[1]:.2f} | {wall:.2f} (median) |")
        if growth:
            growth_facts = [
                f
                for body in build_workload(WorkloadSpec(growth, seed=8)).bodies
                for f in decode(body)
            ]
            durations = await commit_durations(growth_facts, Path(tmp) / "growth.db")
            print(f"\n{growth:,} facts: durations, wall ms\n")
            print("| what | count | p50 | p90 | p99 | max |")
            print("|---|---:|---:|---:|---:|---:|")
            for name, values in durations.items():
                label = name if name == "checkpoint" else f"COMMIT, {name}"
                p50, p90, p99 = (pct(values, q, NAN) for q in (0.5, 0.9, 0.99))
                print(
                    f"| {label} | {len(values)} | {p50:.2f} | {p90:.2f} | {p99:.2f} | "
                    f"{max(values, default=NAN):.2f} |"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--growth-facts", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(main(args.facts, args.repeats, args.growth_facts))
