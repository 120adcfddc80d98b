"""Where the SQLite store's CPU per fact goes in a receive step (PROFILE.md §23).

    .venv/bin/python benchmarks/studies/sqlite_step.py [--facts 40000] [--step 512]
        [--repeats 7]

Per step of ``--step`` independent facts (100 B of payload), as the pipeline
calls the store: ``states()`` of the step's refs and their predecessors, then
one transaction recording the facts (``tx.record``) and its COMMIT on the
event-loop thread (the default). Each of the store's methods below is wrapped
to add up its thread CPU time, so the table splits the store's cost per fact:

- ``_handled``: the identity look-up of ``states()`` (in-memory index);
- ``_append`` (of it ``insert``: the multi-row log ``INSERT`` statements,
  SQLite's work and the binding of their values);
- ``_commit``: the COMMIT (the WAL append);
- ``_refresh``: the ``PRAGMA data_version`` of each look-up and transaction;
- **loop total**: the loop thread's CPU over the whole run, which also holds
  ``BEGIN IMMEDIATE``, the transaction's machinery and this script's own set
  of refs per step; **process**: every thread's (the WAL checkpoint worker).

The run with the median loop total of ``--repeats`` is printed, each on a new
file. For an A/B, run it with ``PYTHONPATH=<other tree>/src``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.envelope import decode
from factbus.fact import Fact, predecessors_of, ref_of
from factbus.store import sqlite as sqlite_store
from factbus.store.base import StoreBatch
from factbus.store.sqlite import SqliteStore

WRAPPED = ("_handled", "_append", "_commit", "_refresh")


def _timed(spent: dict[str, float], name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.thread_time() - start

    return timed


async def one_run(
    path: Path, steps: list[list[Fact]], spent: dict[str, float]
) -> tuple[float, float]:
    """Loop-thread and process CPU seconds of one run over a fresh store."""
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    loop_start, process_start = time.thread_time(), time.process_time()
    for chunk in steps:
        refs = set(map(ref_of, chunk))
        refs |= predecessors_of(chunk)
        await store.states(refs)
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=chunk))
    loop, process = time.thread_time() - loop_start, time.process_time() - process_start
    await store.aclose()
    return loop, process


async def main(facts_count: int, step: int, repeats: int) -> None:
    bodies = build_workload(WorkloadSpec(facts_count, seed=11)).bodies
    facts = [fact for body in bodies for fact in decode(body)]
    steps = [facts[at : at + step] for at in range(0, len(facts), step)]
    spent: dict[str, float] = {}
    for name in WRAPPED:
        setattr(SqliteStore, name, _timed(spent, name, getattr(SqliteStore, name)))
    sqlite_store._insert_many = _timed(spent, "insert", sqlite_store._insert_many)
    runs: list[tuple[float, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(repeats):
            spent.clear()
            loop, process = await one_run(Path(tmp) / f"run{run}.db", steps, spent)
            runs.append((loop, process, dict(spent)))
    runs.sort(key=lambda r: r[0])
    loop, process, split = runs[len(runs) // 2]
    per_fact = 1e6 / len(facts)
    print(f"{len(facts):,} facts, steps of {step}, median of {repeats} runs (CPU µs per fact)\n")
    print("| what | CPU µs/fact |")
    print("|---|---:|")
    for name in ("_handled", "_append", "insert", "_commit", "_refresh"):
        print(f"| {name} | {split.get(name, 0.0) * per_fact:.3f} |")
    print(f"| loop total | {loop * per_fact:.3f} |")
    print(f"| process | {process * per_fact:.3f} |")
    spread = [r[0] * per_fact for r in runs]
    totals = ", ".join(f"{v:.2f}" for v in spread)
    print(f"\nloop totals: {totals} (stdev {statistics.pstdev(spread):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=40_000)
    parser.add_argument("--step", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.facts, args.step, args.repeats))
