"""The SQLite store at a paced rhythm: what delays a step, and by how much.

    .venv/bin/python benchmarks/studies/sqlite_tail.py [--rate 50000] [--step 250]
        [--facts 300000] [--rounds 3] [--memory]

The store alone, as the consumer's pipeline calls it, at the rhythm of
``factbus bench``'s half load on memory:// (~50,000 facts/s in steps of ~250):
every ``step / rate`` seconds a step of ``step`` new independent facts (100 B
of payload) is due; once due it runs ``states()`` on their refs, then a
transaction recording them (``tx.record``), as :meth:`factbus.pipeline.Pipeline.step`
does. A step's handlers would run right after ``BEGIN`` (inside
``transaction()``), so a fact counts as handled then; facts arrive evenly over
the interval before their step is due. Reported per round (one fresh file per
round, ``--facts`` facts):

- **latency** p50 / p99 / max (ms): handled minus arrival, per fact;
- **waits**: how long a step's ``states()`` waited before it returned (the
  store's writer thread holding the connection: a WAL catch-up), the
  transaction's ``BEGIN`` (``transaction()`` entered), and its end (the
  COMMIT, on the loop by default): counts over 1 ms and the largest;
- **restarts**: how many times the WAL restarted from its start (its header's
  checkpoint sequence number), and the WAL file's size at the end (MB);
- **CPU** µs per fact of the process (every thread: the checkpoints too) and
  of the event-loop thread.

Nothing else runs in the process: no decode, no publisher, no garbage from a
pipeline; a pause here is the store's (or the machine's: run rounds
interleaved with another tree, ``PYTHONPATH=<tree>/src``, to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import pct

from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.envelope import decode
from factbus.fact import Fact
from factbus.store.base import StoreBatch
from factbus.store.memory import MemoryStore
from factbus.store.sqlite import SqliteStore

now = time.perf_counter


def _wal_restarts(path: Path) -> int:
    """The checkpoint sequence number in the WAL's header: +1 per restart.
    (Read without a lock: SQLite locks the -shm file, not the WAL.)"""
    wal = Path(f"{path}-wal")
    if not wal.exists():
        return 0
    with wal.open("rb") as f:
        header = f.read(32)
    return struct.unpack(">I", header[12:16])[0] if len(header) == 32 else 0


def _wal_mb(path: Path) -> float:
    """The WAL file's size, MB (0 if there is none)."""
    wal = Path(f"{path}-wal")
    return round(wal.stat().st_size / 1e6, 1) if wal.exists() else 0.0


async def paced(store: Any, facts: list[Fact], step: int, rate: float) -> dict[str, Any]:
    """Record ``facts`` at ``rate`` facts/s in steps of ``step`` (see the module docstring)."""
    interval = step / rate
    latencies: list[float] = []
    states_waits: list[float] = []
    begins: list[float] = []
    ends: list[float] = []
    cpu, loop_cpu = time.process_time(), time.thread_time()
    start = now() + 0.02
    for index, at in enumerate(range(0, len(facts), step)):
        chunk = facts[at : at + step]
        due = start + (index + 1) * interval
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = now()
        await store.states({f.ref for f in chunk})
        t1 = now()
        async with store.transaction() as tx:
            handled = now()
            await tx.record(StoreBatch(handled=chunk))
            t3 = now()
        t4 = now()
        states_waits.append(t1 - t0)
        begins.append(handled - t1)
        ends.append(t4 - t3)
        n = len(chunk)
        arrived0 = due - interval
        latencies.extend(handled - (arrived0 + (k + 1) * interval / n) for k in range(n))
    cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    ms = 1e3

    def over(values: list[float]) -> dict[str, Any]:
        return {
            "over_1ms": sum(1 for v in values if v > 1e-3),
            "max": round(max(values) * ms, 2),
            "top": sorted((round(v * ms, 1) for v in values), reverse=True)[:4],
        }

    return {
        "p50": round(pct(latencies, 0.5) * ms, 2),
        "p99": round(pct(latencies, 0.99) * ms, 2),
        "max": round(max(latencies) * ms, 2),
        "states": over(states_waits),
        "begin": over(begins),
        "end": over(ends),
        "cpu_us": round(cpu / len(facts) * 1e6, 2),
        "loop_cpu_us": round(loop_cpu / len(facts) * 1e6, 2),
    }


CATCH_UPS: list[float] = []
"""Wall ms of each checkpoint the store finished itself (in its writer thread)."""


def _count_catch_ups() -> None:
    finish = SqliteStore._finish_checkpoint

    def timed(self: SqliteStore) -> None:
        start = now()
        finish(self)
        CATCH_UPS.append((now() - start) * 1e3)

    SqliteStore._finish_checkpoint = timed  # type: ignore[method-assign]


async def one_round(
    facts: list[Fact], step: int, rate: float, tmp: Path, name: str, memory: bool
) -> dict[str, Any]:
    path = tmp / f"{name}.db"
    store: Any = MemoryStore() if memory else SqliteStore(f"sqlite:///{path}")
    await store.open()
    CATCH_UPS.clear()
    try:
        result = await paced(store, facts, step, rate)
        if not memory:
            result["catch_ups_ms"] = [round(v, 1) for v in CATCH_UPS]
            result["restarts"] = _wal_restarts(path)
            result["wal_mb"] = _wal_mb(path)
    finally:
        await store.aclose()
    result["load"] = round(os.getloadavg()[0], 2)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--step", type=int, default=250)
    parser.add_argument("--facts", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="the memory store instead")
    parser.add_argument("--json", default="", help="append each round's result to this file")
    args = parser.parse_args()
    bodies = build_workload(WorkloadSpec(args.facts, seed=11)).bodies
    facts = [f for body in bodies for f in decode(body)]
    label = "memory" if args.memory else os.environ.get("STUDY_LABEL", "sqlite")
    _count_catch_ups()
    with tempfile.TemporaryDirectory(prefix="sqlite-tail-") as tmp:
        for run in range(args.rounds):
            result = await one_round(facts, args.step, args.rate, Path(tmp), f"r{run}", args.memory)
            result["label"] = label
            print(json.dumps(result), flush=True)
            if args.json:
                with open(args.json, "a") as f:  # noqa: ASYNC230
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
