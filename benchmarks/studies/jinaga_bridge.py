"""How fast `factbus jinaga-bridge` moves facts, against jinaga.js in the same run.

    eval "$(bash scripts/brokers.sh env)"; bash scripts/jinaga-server.sh start
    FACTBUS_LOG_LEVEL=error .venv/bin/python benchmarks/studies/jinaga_bridge.py [N]

- push: a factbus node publishes a root and N successors on Kafka; time until the
  bridge has saved all N+1 to jinaga-server (a fresh jinaga.js query then checks them);
- pull: jinaga.js saves a root and N successors to jinaga-server (the baseline: the
  unmodified client, one `j.fact` each); time until a factbus node has them all from
  the bridge's feed;
- latency: with a running bridge (poll_interval 1 s), five times a jinaga.js process
  saves one fact; time from that process's exit until the node handled the fact
  (negative: the bridge was faster than the client process's exit).

Written up in docs/jinaga.md ("Measured").
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "jinaga"))

from jinaga_harness import delete_topics, items, jinaga_js, unique

from factbus import Bus, Fact
from factbus.jinaga.bridge import JinagaBridge, parse_bridge_config

SERVER = os.environ.get("FACTBUS_TEST_JINAGA_URL", "http://127.0.0.1:8091/jinaga")
KAFKA = os.environ.get("FACTBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")


def bridge(tmp: str, name: str, topic: str, **jinaga: Any) -> JinagaBridge:
    document = {
        "factbus": {"transport": KAFKA, "topic": topic, "node": unique("app")},
        "jinaga": {"url": SERVER, "store": f"sqlite:///{tmp}/{name}.db", **jinaga},
    }
    return JinagaBridge(parse_bridge_config(document))


async def push(tmp: str, n: int) -> None:
    topic, tag = unique("study-push"), unique("root")
    root = Fact("Study.Root", {"id": tag})
    children = [Fact("Study.Item", {"n": i}, {"root": root}) for i in range(n)]
    writer = Bus(KAFKA, f"sqlite:///{tmp}/w.db", topic=topic, node=unique("w"), consume=False)
    try:
        async with bridge(tmp, "push", topic, poll_interval=0.2) as b:
            start = time.perf_counter()
            await writer.publish(*children)
            await writer.aclose()
            while b.stats.pushed < n + 1:  # noqa: ASYNC110 (a counter, polled)
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
        query = {
            "facts": [{"type": "Study.Root", "fields": {"id": tag}}],
            "given": 0,
            "successor": "Study.Item",
            "role": "root",
        }
        found = await jinaga_js("query", SERVER, query)
        assert {r["hash"] for r in found["results"]} == {c.hash for c in children}
        print(
            f"push: {n + 1} facts bus -> jinaga-server in {elapsed:.2f} s "
            f"({(n + 1) / elapsed:.0f}/s)"
        )
    finally:
        delete_topics(KAFKA, [topic])


async def pull(tmp: str, n: int) -> None:
    topic, tag = unique("study-pull"), unique("root")
    root = {"type": "Study.Root", "fields": {"id": tag}}
    start = time.perf_counter()
    saved = await jinaga_js("save", SERVER, {"facts": items(root, "Study.Item", "root", range(n))})
    baseline = time.perf_counter() - start
    got: set[str] = set()
    done = asyncio.Event()
    reader = Bus(KAFKA, f"sqlite:///{tmp}/r.db", topic=topic, node=unique("r"))

    @reader.handler("*")
    def on_fact(fact: Fact) -> None:
        got.add(fact.hash)
        if len(got) >= n + 1:
            done.set()

    feed = {"root": root, "successor": "Study.Item", "role": "root"}
    try:
        async with reader:
            start = time.perf_counter()
            async with bridge(tmp, "pull", topic, poll_interval=0.2, push=False, feed=[feed]) as b:
                await asyncio.wait_for(done.wait(), 600)
                elapsed = time.perf_counter() - start
                pages = b.stats.pages
        assert got == set(saved["hashes"])
        print(
            f"pull: jinaga.js saved {n + 1} facts in {baseline:.2f} s (baseline); "
            f"jinaga-server -> bus node in {elapsed:.2f} s, {pages} pages "
            f"({(n + 1) / elapsed:.0f}/s, {baseline / elapsed:.1f}x the client's save rate)"
        )
    finally:
        delete_topics(KAFKA, [topic])


async def latency(tmp: str) -> None:
    topic, tag = unique("study-latency"), unique("root")
    root = {"type": "Study.Root", "fields": {"id": tag}}
    await jinaga_js("save", SERVER, {"facts": [root]})
    seen: dict[int, float] = {}
    arrived = asyncio.Event()
    reader = Bus(KAFKA, f"sqlite:///{tmp}/l.db", topic=topic, node=unique("l"))

    @reader.handler("Study.Item")
    def on_item(fact: Fact) -> None:
        seen[int(fact.fields["n"])] = time.perf_counter()
        arrived.set()

    feed = {"root": root, "successor": "Study.Item", "role": "root"}
    delays = []
    try:
        async with reader, bridge(tmp, "latency", topic, push=False, feed=[feed]):
            await asyncio.sleep(1.5)
            for i in range(5):
                arrived.clear()
                one = {"type": "Study.Item", "fields": {"n": i}, "predecessors": {"root": 0}}
                await jinaga_js("save", SERVER, {"facts": [root, one]})
                saved = time.perf_counter()
                await asyncio.wait_for(arrived.wait(), 30)
                delays.append(seen[i] - saved)
        print("latency, client process exit -> node (s):", [round(d, 2) for d in delays])
    finally:
        delete_topics(KAFKA, [topic])


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await push(tmp, n)
        await pull(tmp, n)
        await latency(tmp)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
