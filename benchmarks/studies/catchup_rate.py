"""Catch-up rate of a new node against the live drain rate, in the same run.

    eval "$(bash scripts/brokers.sh env)"
    .venv/bin/python benchmarks/studies/catchup_rate.py --transport "$FACTBUS_TEST_REDIS_URL" \
        --transport "$FACTBUS_TEST_AMQP_URL" --facts 10000 --repeat 3 --write

One peer sidecar (`factbus sidecar`, no views: archive and export) consumes the
topic. The workload is a random DAG of ``--facts`` facts, published shuffled with
30 % duplicates, one fact per envelope. Then, per repeat:

- **live drain**: a node whose queue already holds the whole workload (it
  subscribed before the publish, then stopped) starts and handles it from the
  broker; rate = facts handled / seconds from start to the last one handled.
- **catch-up**: a new node (empty SQLite store, same no-op handlers) pulls the
  peer's export (``GET /facts``, pages of ``--page`` facts) through its pipeline;
  rate = facts / seconds of ``Bus.catch_up``.

Both nodes use SQLite stores in a temporary directory and the same handlers, so
the ratio compares the broker path (1.3 envelopes per fact, acks) with the
HTTP path (verified pages, one transaction per page). ``--write`` replaces the
"## Catch-up rate" section of benchmarks/RESULTS.md (run_matrix.py keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests" / "history"))

from peer_support import peer_sidecar, wait_exported  # noqa: E402

from factbus import Bus  # noqa: E402
from factbus.bench.report import replace_section  # noqa: E402
from factbus.testing.scenario import random_dag, shuffled_with_duplicates  # noqa: E402
from factbus.urls import redact  # noqa: E402

TYPES = ("Scenario.Independent", "Scenario.Chains", "Scenario.FanIn")
HEADING = "## Catch-up rate"


def node(transport: str, store: Path, topic: str, name: str) -> Bus:
    bus = Bus(transport, f"sqlite:///{store}", topic=topic, node=name)
    for fact_type in TYPES:
        bus.handler(fact_type)(lambda fact: None)
    return bus


async def live_drain(transport: str, store: Path, topic: str, name: str, facts: int) -> float:
    bus = node(transport, store, topic, name)
    started = time.perf_counter()
    async with bus:
        while bus.stats.handled < facts:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    return facts / elapsed


async def catch_up(
    transport: str, store: Path, topic: str, name: str, peer: str, page: int
) -> float:
    bus = node(transport, store, topic, name)
    try:
        report = await bus.catch_up(peer, limit=page)
    finally:
        await bus.aclose()
    return report.rate


async def measure(args: argparse.Namespace, transport: str, work: Path) -> dict[str, list[float]]:
    topic = f"catchup-bench-{uuid.uuid4().hex[:8]}"
    dag = random_dag(args.facts, seed=5)
    order = shuffled_with_duplicates(dag, duplicates=0.3, seed=5)
    drains: list[float] = []
    catchups: list[float] = []
    with peer_sidecar(transport, work / "peer.db", topic, "peer", work / "peer.log") as peer:
        drainers = [f"drain-{i}" for i in range(args.repeat)]
        for name in drainers:  # their queues exist before the publish
            async with node(transport, work / f"{name}.db", topic, name):
                pass
        async with Bus(transport, "memory://", topic=topic, node="pub", consume=False) as pub:
            for start in range(0, len(order), 500):
                await pub.publish(*order[start : start + 500], ancestors=False)
        exported = await asyncio.to_thread(wait_exported, peer, args.facts, 600)
        assert len(exported) == args.facts, f"the peer has {len(exported)} facts"
        for i, name in enumerate(drainers):
            store = work / f"{name}.db"
            drains.append(await live_drain(transport, store, topic, name, args.facts))
            late = f"late-{i}"
            catchups.append(
                await catch_up(transport, work / f"{late}.db", topic, late, peer, args.page)
            )
            shown = redact(transport)
            print(f"{shown} run {i + 1}: drain {drains[-1]:.0f}/s, catch-up {catchups[-1]:.0f}/s")
    return {"drain": drains, "catchup": catchups}


def section(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for transport, result in results.items():
        drain = statistics.median(result["drain"])
        catchup = statistics.median(result["catchup"])
        runs = ", ".join(
            f"{d:.0f} / {c:.0f}" for d, c in zip(result["drain"], result["catchup"], strict=True)
        )
        rows.append(
            f"| {redact(transport)} | {drain:,.0f} | {catchup:,.0f} | "
            f"{catchup / drain:.1f}x | {runs} |"
        )
    transports = " ".join(f"--transport {redact(t)}" for t in results)
    return (
        f"{HEADING}\n\n"
        f"A new node catching up {args.facts:,} facts from a peer sidecar's export (pages of "
        f"{args.page}) against a node draining the same facts live from its broker queue "
        "(1.3 envelopes per fact: 30 % duplicates), same run; SQLite stores, no-op handlers, "
        f"median of {args.repeat} runs (benchmarks/studies/catchup_rate.py).\n\n"
        "| transport | live drain facts/s | catch-up facts/s | catch-up / drain | runs (drain / "
        "catch-up) |\n|---|---:|---:|---:|---|\n" + "\n".join(rows) + "\n\n"
        f"Command: `.venv/bin/python benchmarks/studies/catchup_rate.py {transports} "
        f"--facts {args.facts} --page {args.page} --repeat {args.repeat} --write`\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", action="append", required=True, help="repeatable")
    parser.add_argument("--facts", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    results = {}
    for transport in args.transport:
        with tempfile.TemporaryDirectory(prefix="factbus-catchup-") as tmp:
            results[transport] = asyncio.run(measure(args, transport, Path(tmp)))
    text = section(args, results)
    print(text)
    if args.write:
        replace_section(HERE.parent / "RESULTS.md", HEADING, text)


if __name__ == "__main__":
    main()
