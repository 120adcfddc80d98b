"""What recording handled facts costs in SQLite, and what cheaper variants would cost.

    .venv/bin/python benchmarks/studies/sqlite_variants.py [--facts 50000] [--repeats 5]
    .venv/bin/python benchmarks/studies/sqlite_variants.py --growth --facts 200000

Each variant records the same facts as handled, 512 per transaction, into a
fresh database file with the store's pragmas (WAL, synchronous=NORMAL), and
reports µs per fact (best of 3). ``current`` is :class:`SqliteStore` itself
(schema 2 since issue 15: the fact log); the others replay schema 1's statements
with one change each, to size the
suggestions in benchmarks/studies/PROFILE.md. Nothing here changes the store.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.fact import Fact
from factbus.store.base import StoreBatch
from factbus.store.sqlite import SCHEMA_1, SqliteStore

_SCHEMA = SCHEMA_1
"""Schema 1, the store's layout before the fact log (schema 2), which the variants
below replay; ``current`` is the store as it is now."""

BATCH = 512


def _db(path: Path, schema: str, cache_kib: int = 0) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if cache_kib:
        db.execute(f"PRAGMA cache_size=-{cache_kib}")
    db.executescript(schema)
    return db


def replay(
    path: Path,
    facts: list[Fact],
    *,
    deletes: bool = True,
    body: bool = True,
    schema: str = _SCHEMA,
    binary_key: bool = False,
    cache_kib: int = 0,
    separate_bodies: bool = False,
    batch: int = BATCH,
) -> None:
    db = _db(path, schema, cache_kib)
    if separate_bodies:
        db.execute("CREATE TABLE factbus_bodies (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    seq = 0
    for start in range(0, len(facts), batch):
        chunk = facts[start : start + batch]
        db.execute("BEGIN IMMEDIATE")
        rows = []
        for fact in chunk:
            seq += 1
            key: object = base64.b64decode(fact.hash) if binary_key else fact.hash
            rows.append((key, fact.type, seq, fact.wire_bytes() if body else b""))
        if separate_bodies:  # append-only, in arrival order; the key table stays small
            db.executemany("INSERT INTO factbus_bodies VALUES (?, ?)", [(r[2], r[3]) for r in rows])
            rows = [(r[0], r[1], r[2], b"") for r in rows]
        db.executemany(
            "INSERT INTO factbus_facts (hash, type, state, seq, body) VALUES (?, ?, 1, ?, ?) "
            "ON CONFLICT (hash, type) DO UPDATE SET state = 1",
            rows,
        )
        if deletes:
            keys = [(fact.hash, fact.type) for fact in chunk]
            db.executemany(
                "DELETE FROM factbus_waiting WHERE missing_hash = ? AND missing_type = ?", keys
            )
            db.executemany("DELETE FROM factbus_waiting WHERE hash = ? AND type = ?", keys)
        db.execute("COMMIT")
    db.close()


async def current(path: Path, facts: list[Fact]) -> None:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    for start in range(0, len(facts), BATCH):
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=facts[start : start + BATCH]))
    await store.aclose()


def once(run: Callable[[Path], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run on a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.db"
        wall, cpu = time.perf_counter(), time.process_time()
        run(path)
        return time.perf_counter() - wall, time.process_time() - cpu


async def growth(facts: list[Fact], every: int = 25_088) -> None:
    """Cost of recording handled facts as the table grows (the store as it is)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"sqlite:///{Path(tmp) / 'g.db'}")
        await store.open()
        print("| rows in the table | CPU µs per fact | wall µs per fact |\n|---:|---:|---:|")
        cpu, wall, done = time.process_time(), time.perf_counter(), 0
        for start in range(0, len(facts), BATCH):
            async with store.transaction() as tx:
                await tx.record(StoreBatch(handled=facts[start : start + BATCH]))
            done += BATCH
            if done % every == 0:
                c, w = time.process_time(), time.perf_counter()
                print(
                    f"| {done:,} | {(c - cpu) / every * 1e6:.1f} | {(w - wall) / every * 1e6:.1f} |"
                )
                cpu, wall = c, w
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--growth", action="store_true", help="cost as the table grows instead")
    args = parser.parse_args()
    facts = build_workload(WorkloadSpec(args.facts)).order
    for fact in facts:
        fact.wire_bytes()  # cache: this measures SQLite, not serialization
    if args.growth:
        asyncio.run(growth(facts))
        return
    partial = _SCHEMA.replace(
        "CREATE INDEX IF NOT EXISTS factbus_facts_parked ON factbus_facts (state, seq);",
        "CREATE INDEX IF NOT EXISTS factbus_facts_parked ON factbus_facts (seq) WHERE state = 2;",
    )
    binary = partial.replace(
        "hash TEXT NOT NULL, type TEXT NOT NULL,\n    state",
        "hash BLOB NOT NULL, type TEXT NOT NULL,\n    state",
    )
    n = len(facts)
    variants: list[tuple[str, Callable[[Path], None]]] = [
        ("current SqliteStore (record handled)", lambda p: asyncio.run(current(p, facts))),
        ("same statements, replayed", lambda p: replay(p, facts)),
        ("without the two wait-list DELETEs", lambda p: replay(p, facts, deletes=False)),
        (
            "current statements, cache_size 64 MiB (default 2 MiB)",
            lambda p: replay(p, facts, cache_kib=65536),
        ),
        (
            "current statements, 4096 facts per transaction",
            lambda p: replay(p, facts, batch=4096),
        ),
        (
            "current statements, bodies in an append-only rowid table",
            lambda p: replay(p, facts, separate_bodies=True),
        ),
        (
            "no DELETEs, partial index (seq) WHERE state = 2",
            lambda p: replay(p, facts, deletes=False, schema=partial),
        ),
        (
            "no DELETEs, partial index, no body for handled facts",
            lambda p: replay(p, facts, deletes=False, schema=partial, body=False),
        ),
        (
            "no DELETEs, partial index, no body, 64-byte binary hash key",
            lambda p: replay(
                p,
                facts,
                deletes=False,
                schema=binary,
                body=False,
                binary_key=True,
            ),
        ),
    ]
    walls: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpus: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):  # interleaved, so that load drifts hit every variant
        for name, run in variants:
            wall, cpu = once(run)
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"{n} facts recorded as handled, {BATCH} per transaction, best of {args.repeats}\n")
    print("| variant | CPU µs per fact | wall µs per fact |\n|---|---:|---:|")
    for name, _ in variants:
        print(f"| {name} | {min(cpus[name]) / n * 1e6:.2f} | {min(walls[name]) / n * 1e6:.2f} |")


if __name__ == "__main__":
    main()
