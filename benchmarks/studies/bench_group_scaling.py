"""Group mode scaling: throughput with 1, 2 and 4 worker processes over Kafka and
RabbitMQ, sharing one PostgreSQL store.

    eval "$(bash scripts/brokers.sh env)"
    .venv/bin/python benchmarks/studies/bench_group_scaling.py      # kafka + amqp, 1/2/4
    .venv/bin/python benchmarks/studies/bench_group_scaling.py --brokers kafka --workers 1,4 \\
        --facts 10000 --handler-ms 2

Each cell starts ``factbus worker bench_group_scaling:build_bus --workers N``
on a fresh topic and schema, waits until every worker is up and the group has
settled (``--settle``), then publishes ``--facts`` facts (a causal DAG in causal
order, or shuffled with 30% duplicates with ``--shuffle``) while the workers
consume, and stops them with SIGTERM once every fact is handled
(``--backlog``: publish everything first, then start the workers). Each fact's
handler inserts one row in the same transaction as its handled mark (the
exactly-once effect group mode is for), after sleeping ``--handler-ms`` (an
I/O-bound handler: a call to another service). The rate is measured from those
rows' commit times between the 10th and the 90th percentile ("steady");
"total" is facts over the first-to-last-row time. CPU use is sampled per
process (workers, PostgreSQL, broker, publisher, anything else: the machine is
shared) and shown in cores.

Every cell also checks the result: each fact handled once, after its
predecessors. The table goes to stdout, the figures to ``--json``.

This module is also the workers' application: ``build_bus`` reads its
settings from ``BENCH_GROUP_*`` variables set by the runner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from factbus import Bus, Fact
from factbus.testing.brokers import prepare_group, remove_topic, with_options
from factbus.testing.commands import WorkerCommand
from factbus.testing.scenario import random_dag, shuffled_with_duplicates
from factbus.urls import redact

HERE = Path(__file__).resolve().parent
DEFAULT_URLS = {
    "kafka": "kafka://127.0.0.1:9092",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "postgres": "postgresql://factbus:factbus@127.0.0.1:5432/factbus",
}
GROUP = "bench-workers"


# -- the workers' application -------------------------------------------------------


def build_bus() -> Bus:
    """One worker: group mode, shared store, a transactional handler per fact type."""
    env = os.environ
    schema = env["BENCH_GROUP_SCHEMA"]
    pause = float(env.get("BENCH_GROUP_HANDLER_MS", "0")) / 1000
    bus = Bus(
        env["BENCH_GROUP_TRANSPORT"],
        env["BENCH_GROUP_STORE"],
        topic=env["BENCH_GROUP_TOPIC"],
        group=GROUP,
        node="bench",
    )
    insert = (
        f'INSERT INTO "{schema}".effects (hash, worker, in_order) VALUES ($1, $2, '
        f'(SELECT count(DISTINCT e.hash) FROM "{schema}".effects e '
        f"WHERE e.hash = ANY($3::text[])) = cardinality($3::text[]))"
    )

    async def effect(fact: Fact, conn: asyncpg.Connection) -> None:
        if pause:
            await asyncio.sleep(pause)
        preds = sorted({ref.hash for ref in fact.predecessor_refs()})
        await conn.execute(insert, fact.hash, bus.settings.node_name, preds)

    for fact_type in ("Scenario.Independent", "Scenario.Chains", "Scenario.FanIn"):
        bus.handler(fact_type, transactional=True)(effect)
    return bus


# -- the runner ---------------------------------------------------------------------


@dataclass
class Cell:
    broker: str
    workers: int
    facts: int
    messages: int
    handler_ms: float
    shuffled: bool
    steady_facts_per_s: float
    total_facts_per_s: float
    total_seconds: float
    lost: int
    duplicated: int
    out_of_order: int
    share: dict[str, int]
    """Facts handled by each worker process."""
    cpu_load_before: float
    """1-minute load average when the cell started (the machine is shared)."""
    cpu_seconds: dict[str, float]
    """CPU seconds used while the facts were handled: by the workers, PostgreSQL,
    the broker, this process (the publisher), and every other process."""
    wall_seconds: float


def _store_options() -> dict[str, str]:
    """Extra store URL options from ``BENCH_GROUP_STORE_OPTIONS`` (``a=1&b=2``)."""
    raw = os.environ.get("BENCH_GROUP_STORE_OPTIONS", "")
    return dict(part.split("=", 1) for part in raw.split("&") if part)


async def run_cell(broker: str, url: str, pg: str, workers: int, args: argparse.Namespace) -> Cell:
    schema = f"fbbench_{uuid.uuid4().hex[:10]}"
    topic = f"bench-group-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(pg)
    await conn.execute(
        f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".effects (hash text NOT NULL, '
        "worker text NOT NULL, in_order boolean NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp()); "
        f'CREATE INDEX ON "{schema}".effects (hash)'
    )
    try:
        dag = random_dag(args.facts, seed=args.seed, shape=args.shape)
        order = (
            shuffled_with_duplicates(dag, duplicates=0.3, seed=args.seed) if args.shuffle else dag
        )
        await prepare_group(url, topic, GROUP)
        publisher = Bus(url, "memory://", topic=topic, node="bench-publisher", consume=False)
        await publisher.start()

        async def publish() -> None:
            for start in range(0, len(order), 1000):
                await publisher.publish(*order[start : start + 1000], ancestors=False)

        env = dict(
            os.environ,
            BENCH_GROUP_TRANSPORT=url,
            BENCH_GROUP_STORE=with_options(pg, schema=schema, pool_max=3, **_store_options()),
            BENCH_GROUP_TOPIC=topic,
            BENCH_GROUP_SCHEMA=schema,
            BENCH_GROUP_HANDLER_MS=str(args.handler_ms),
            FACTBUS_LOG_LEVEL="error",
        )
        if args.backlog:
            await publish()
        load = os.getloadavg()[0]
        supervisor = WorkerCommand(
            "bench_group_scaling:build_bus", "--workers", str(workers), app_dir=HERE, env=env
        )
        await supervisor.start()
        started = time.monotonic()
        try:
            if not args.backlog:
                # Live: every worker up and the group settled (Kafka rebalances
                # once per join) before the first fact is published.
                up = f"factbus worker: {workers}/{workers} up"
                await supervisor.wait_for(up, timeout=args.timeout)
                await asyncio.sleep(args.settle)
            cpu_before = _cpu_by_pid()
            measured = time.monotonic()
            if not args.backlog:
                await publish()
            count = "SELECT count(DISTINCT hash) FROM " + f'"{schema}".effects'
            while (done := await conn.fetchval(count)) < args.facts:
                if time.monotonic() - started > args.timeout:
                    raise TimeoutError(f"{broker} x{workers}: {done}/{args.facts} handled")
                supervisor.check_alive()
                await asyncio.sleep(0.1)
            wall = time.monotonic() - measured
            cpu = _cpu_used(cpu_before, supervisor.pid)
        finally:
            await supervisor.stop(timeout=args.timeout)
            await publisher.aclose()
        rows = await conn.fetch(
            f'SELECT hash, worker, in_order, extract(epoch FROM at) AS t FROM "{schema}".effects '
            "ORDER BY at"
        )
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        await remove_topic(url, topic, [GROUP])
    times = [float(row["t"]) for row in rows]
    n = len(times)
    lo, hi = times[n // 10], times[(9 * n) // 10]
    steady = (0.8 * n) / (hi - lo) if hi > lo else float("inf")
    span = times[-1] - times[0]
    hashes = [row["hash"] for row in rows]
    share: dict[str, int] = {}
    for row in rows:
        share[row["worker"]] = share.get(row["worker"], 0) + 1
    return Cell(
        broker=broker,
        workers=workers,
        facts=args.facts,
        messages=len(order),
        handler_ms=args.handler_ms,
        shuffled=args.shuffle,
        steady_facts_per_s=round(steady, 1),
        total_facts_per_s=round(n / span, 1) if span else float("inf"),
        total_seconds=round(span, 2),
        lost=len({f.hash for f in dag} - set(hashes)),
        duplicated=len(hashes) - len(set(hashes)),
        out_of_order=sum(1 for row in rows if not row["in_order"]),
        share=dict(sorted(share.items())),
        cpu_load_before=round(load, 2),
        cpu_seconds=cpu,
        wall_seconds=round(wall, 2),
    )


def _cpu_by_pid() -> dict[int, float]:
    out: dict[int, float] = {}
    for proc in psutil.process_iter():
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = times.user + times.system
    return out


def _cpu_used(before: dict[int, float], supervisor: int) -> dict[str, float]:
    """CPU seconds since ``before``, by the workers, postgres, the broker, and others."""
    try:
        workers = {supervisor} | {
            child.pid for child in psutil.Process(supervisor).children(recursive=True)
        }
    except psutil.Error:
        workers = {supervisor}
    used = dict.fromkeys(("workers", "postgres", "broker", "publisher", "other"), 0.0)
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        delta = times.user + times.system - before.get(proc.pid, 0.0)
        name = proc.info["name"] or ""
        command = " ".join(proc.info["cmdline"] or ())
        if proc.pid in workers:
            who = "workers"
        elif proc.pid == os.getpid():
            who = "publisher"
        elif name.startswith("postgres"):
            who = "postgres"
        elif "beam.smp" in name or ("java" in name and "kafka" in command):
            who = "broker"
        else:
            who = "other"
        used[who] += max(delta, 0.0)
    return {k: round(v, 2) for k, v in used.items()}


def _table(cells: list[Cell]) -> str:
    head = (
        f"{'broker':<7} {'workers':>7} {'facts':>7} {'steady f/s':>11} {'speedup':>8} "
        f"{'total f/s':>10} {'seconds':>8} {'lost/dup/ooo':>13} {'load':>5} "
        f"{'cores: workers/pg/broker/pub/other':>34}  share"
    )
    lines = [head, "-" * len(head)]
    base = {c.broker: c.steady_facts_per_s for c in cells if c.workers == 1}
    for cell in cells:
        speedup = (
            f"{cell.steady_facts_per_s / base[cell.broker]:>7.2f}x"
            if cell.broker in base
            else "      -"
        )
        checks = f"{cell.lost}/{cell.duplicated}/{cell.out_of_order}"
        lines.append(
            f"{cell.broker:<7} {cell.workers:>7} {cell.facts:>7} "
            f"{cell.steady_facts_per_s:>11,.0f} {speedup} "
            f"{cell.total_facts_per_s:>10,.0f} {cell.total_seconds:>8.1f} {checks:>13} "
            f"{cell.cpu_load_before:>5.1f} {_cores(cell):>34}  "
            f"{'/'.join(str(v) for v in cell.share.values())}"
        )
    return "\n".join(lines)


def _cores(cell: Cell) -> str:
    wall = cell.wall_seconds or 1.0
    who = ("workers", "postgres", "broker", "publisher", "other")
    parts = [cell.cpu_seconds.get(k, 0.0) / wall for k in who]
    return "/".join(f"{p:.2f}" for p in parts)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    pg = os.environ.get("FACTBUS_TEST_POSTGRES_URL", DEFAULT_URLS["postgres"])
    cells: list[Cell] = []
    for broker in args.brokers.split(","):
        url = os.environ.get(f"FACTBUS_TEST_{broker.upper()}_URL", DEFAULT_URLS[broker])
        for workers in (int(w) for w in args.workers.split(",")):
            runs = [await run_cell(broker, url, pg, workers, args) for _ in range(args.repeat)]
            # The median run by steady rate represents the cell.
            median = statistics.median_low(r.steady_facts_per_s for r in runs)
            cell = next(r for r in runs if r.steady_facts_per_s == median)
            cells.append(cell)
            print(
                f"{broker} x{workers}: {cell.steady_facts_per_s:,.0f} facts/s steady, "
                f"{cell.total_facts_per_s:,.0f} overall (runs: "
                f"{', '.join(f'{r.steady_facts_per_s:,.0f}' for r in runs)})",
                file=sys.stderr,
                flush=True,
            )
    print(_table(cells))
    return {
        "benchmark": "group_scaling",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "store": redact(pg),
        "cells": [asdict(cell) for cell in cells],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--brokers", default="kafka,amqp", help="comma-separated: kafka, amqp")
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--shape", default="mixed", help="random_dag shape (default mixed)")
    parser.add_argument(
        "--shuffle", action="store_true", help="publish shuffled, with 30%% duplicates"
    )
    parser.add_argument(
        "--handler-ms", type=float, default=0.0, help="milliseconds each handler waits"
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="publish everything before the workers start (default: start the workers, "
        "wait --settle seconds, then publish while they consume)",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median shown)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--json", default=str(HERE / "group_scaling.json"))
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    bad = [c for c in result["cells"] if c["lost"] or c["duplicated"] or c["out_of_order"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
