"""What recording a handled fact costs in SQLite as the store grows, to 1,000,000 facts.

    .venv/bin/python benchmarks/store_growth.py [--facts 1000000] [--index-facts N] [--write]

Records independent facts (100 B of payload) in steps of 512, one transaction
per step, and prints the wall µs per fact at each mark (10,000, 100,000, ...,
the last: the median of the 16 steps before it) for:

- **store**: :class:`factbus.store.sqlite.SqliteStore` as it is (``tx.record``):
  schema 2, the append-only fact log with its identity index in memory.
- **text key**: plain sqlite3, schema 1's layout (88-character base64
  key, body inline, WITHOUT ROWID), one ``executemany`` per step.
- **binary key**: plain sqlite3, a 16-byte key (the first bytes of the
  SHA-512) in a WITHOUT ROWID table with no body; the bodies in an
  append-only rowid table.
- **append-only log**: plain sqlite3, the body in an append-only rowid table
  and no index (identity kept in memory and rebuilt from the log on start).

All with WAL and synchronous=NORMAL, as the store opens. Then the memory of
the store's in-memory index (tracemalloc, bytes per handled fact) and the time
``open()`` takes to rebuild it, for the store just written and for a log of
``--index-facts`` rows (default 10,000,000; synthetic hashes written straight
into ``factbus_log``; 0 skips it). The target of
issue 15: the 1,000,000th fact at ≤ 1.5x the cost of the 10,000th
(``growth`` column: last mark ÷ 10,000 mark). ``--write`` replaces the
"## Store growth" section of benchmarks/RESULTS.md (run_matrix.py keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

from factbus.bench.report import replace_section
from factbus.fact import Fact
from factbus.store.base import StoreBatch
from factbus.store.sqlite import SqliteStore

HERE = Path(__file__).resolve().parent
STEP = 512
WINDOW = 16
"""Steps before each mark whose median cost is reported (the machine is shared: a
median of 16 steps resists another process's burst better than a mean of 8)."""


def marks(total: int) -> list[int]:
    out = [m for m in (10_000, 100_000, 250_000, 500_000) if m < total]
    return [*out, total]


def fact_steps(total: int) -> Iterator[list[Fact]]:
    """``total`` distinct facts in steps of :data:`STEP`, built as they are needed."""
    pad = "x" * 100
    for start in range(0, total, STEP):
        yield [
            Fact("Growth.Fact", {"n": n, "run": "growth", "pad": pad})
            for n in range(start, min(start + STEP, total))
        ]


class Curve:
    """µs per fact of the steps around each mark."""

    def __init__(self, total: int) -> None:
        self.marks = marks(total)
        self.windows: dict[int, list[float]] = {m: [] for m in self.marks}
        self.done = 0

    def add(self, seconds: float, count: int) -> None:
        self.done += count
        for mark in self.marks:
            if mark - WINDOW * STEP < self.done <= mark:
                self.windows[mark].append(seconds / count * 1e6)

    def at(self, mark: int) -> float:
        values = self.windows[mark]
        return statistics.median(values) if values else float("nan")


def plain(path: Path, total: int, schema: str, write: Callable[..., None]) -> Curve:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    curve = Curve(total)
    for facts in fact_steps(total):
        rows = [(f.hash, f.type, f.wire_bytes()) for f in facts]
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        write(db, rows)
        db.execute("COMMIT")
        curve.add(time.perf_counter() - start, len(facts))
    db.close()
    return curve


def text_key(db: sqlite3.Connection, rows: list[tuple[str, str, bytes]]) -> None:
    db.executemany("INSERT INTO facts VALUES (?, ?, 1, ?)", rows)


def binary_key(db: sqlite3.Connection, rows: list[tuple[str, str, bytes]]) -> None:
    cursor = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM bodies")
    first = cursor.fetchone()[0] + 1
    db.executemany("INSERT INTO bodies (type, body) VALUES (?, ?)", [(t, b) for _, t, b in rows])
    db.executemany(
        "INSERT INTO ids VALUES (?, ?)",
        [(base64.b64decode(h)[:16], first + i) for i, (h, _, _) in enumerate(rows)],
    )


def log_only(db: sqlite3.Connection, rows: list[tuple[str, str, bytes]]) -> None:
    db.executemany("INSERT INTO log (hash, type, body) VALUES (?, ?, ?)", rows)


SCHEMAS = {
    "text key": (
        "CREATE TABLE facts (hash TEXT, type TEXT, state INTEGER, body BLOB, "
        "PRIMARY KEY (hash, type)) WITHOUT ROWID;",
        text_key,
    ),
    "binary key": (
        "CREATE TABLE bodies (type TEXT, body BLOB);"
        "CREATE TABLE ids (id BLOB PRIMARY KEY, at INTEGER) WITHOUT ROWID;",
        binary_key,
    ),
    "append-only log": ("CREATE TABLE log (hash TEXT, type TEXT, body BLOB);", log_only),
}


async def through_store(path: Path, total: int) -> Curve:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    curve = Curve(total)
    for facts in fact_steps(total):
        start = time.perf_counter()
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=facts))
        curve.add(time.perf_counter() - start, len(facts))
    await store.aclose()
    return curve


def synthetic_log(path: Path, total: int) -> None:
    """A schema 2 store whose log holds ``total`` handled facts (random hashes)."""
    asyncio.run(_create(path))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for start in range(0, total, 100_000):
        count = min(100_000, total - start)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO factbus_log (hash, type) VALUES (?, 'Growth.Fact')",
            ((base64.b64encode(os.urandom(64)).decode(),) for _ in range(count)),
        )
        db.execute("COMMIT")
    db.close()


async def _create(path: Path) -> None:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.aclose()


class IndexCost:
    """What opening a store of ``facts`` handled facts costs: rebuild time, index memory."""

    def __init__(self, path: Path) -> None:
        self.open_s = asyncio.run(self._open(path, traced=False))
        tracemalloc.start()
        try:
            asyncio.run(self._open(path, traced=True))
        finally:
            tracemalloc.stop()

    async def _open(self, path: Path, *, traced: bool) -> float:
        store = SqliteStore(f"sqlite:///{path}")
        before = tracemalloc.get_traced_memory()[0] if traced else 0
        start = time.perf_counter()
        await store.open()
        elapsed = time.perf_counter() - start
        if traced:
            self.bytes = tracemalloc.get_traced_memory()[0] - before
        self.facts = (await store.counts())["handled"]
        await store.aclose()
        return elapsed

    def row(self, what: str) -> str:
        return (
            f"| {what} | {self.facts:,} | {self.bytes / self.facts:.0f} | "
            f"{self.bytes / 2**20:,.0f} | {self.open_s:.1f} |"
        )


def index_markdown(costs: dict[str, IndexCost]) -> str:
    lines = [
        "",
        "The store's identity index, kept in memory and rebuilt from the log by "
        "`open()` (tracemalloc; *synthetic*: random hashes written straight into "
        "`factbus_log`):",
        "",
        "| store | handled facts | index bytes/fact | index MB | open() s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [cost.row(what) for what, cost in costs.items()]
    return "\n".join(lines) + "\n"


def markdown(curves: dict[str, Curve], total: int, index_facts: int) -> str:
    marks_ = next(iter(curves.values())).marks
    head = " | ".join(f"{m:,}" for m in marks_)
    lines = [
        "## Store growth",
        "",
        f"Written by `benchmarks/store_growth.py --facts {total} --index-facts {index_facts} "
        f"--write` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: wall µs per recorded fact "
        f"(steps of {STEP}, one transaction each, WAL, synchronous=NORMAL), the median of the "
        f"{WINDOW} steps before each mark. Target (issue 15): the last mark ≤ 1.5x the "
        "10,000 mark.",
        "",
        f"| layout | {head} | growth | verdict |",
        "|---|" + "---:|" * (len(marks_) + 1) + "---|",
    ]
    for name, curve in curves.items():
        growth = curve.at(marks_[-1]) / curve.at(marks_[0])
        cells = " | ".join(f"{curve.at(m):.1f}" for m in marks_)
        verdict = "met" if growth <= 1.5 else "NOT met"
        lines.append(f"| {name} | {cells} | {growth:.2f}x | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--index-facts", type=int, default=10_000_000)
    parser.add_argument("--only", nargs="*", help="layouts: store, 'text key', ...")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md")
    args = parser.parse_args()
    curves: dict[str, Curve] = {}
    costs: dict[str, IndexCost] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only or "store" in args.only:
            print("store ...", flush=True)
            curves["store (SqliteStore: fact log)"] = asyncio.run(
                through_store(Path(tmp) / "store.db", args.facts)
            )
            costs["the store above"] = IndexCost(Path(tmp) / "store.db")
            if args.index_facts:
                print(f"index of {args.index_facts:,} facts ...", flush=True)
                synthetic_log(Path(tmp) / "big.db", args.index_facts)
                costs["synthetic"] = IndexCost(Path(tmp) / "big.db")
                (Path(tmp) / "big.db").unlink()
        for name, (schema, writer) in SCHEMAS.items():
            if args.only and name not in args.only:
                continue
            print(f"{name} ...", flush=True)
            curves[name] = plain(
                Path(tmp) / f"{name.replace(' ', '_')}.db", args.facts, schema, writer
            )
    section = markdown(curves, args.facts, args.index_facts)
    if costs:
        section += index_markdown(costs)
    print(section)
    if args.write:
        replace_section(HERE / "RESULTS.md", "## Store growth", section)


if __name__ == "__main__":
    main()
