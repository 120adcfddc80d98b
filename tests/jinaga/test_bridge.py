"""Round trips between factbus and the unmodified jinaga-server 3.7.5 / jinaga.js 6.11.3
from npm, over the real Kafka (scripts/jinaga-server.sh runs the server; `make test` starts it).

- jinaga.js client -> jinaga-server -> bridge (pull) -> Kafka -> a factbus node: same hashes
- a factbus node -> Kafka -> bridge (push) -> jinaga-server -> a fresh jinaga.js client's query
- `factbus jinaga-bridge` stopped and started again resumes from its kept bookmark: every
  fact is on Kafka exactly once
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from jinaga_harness import items, jinaga_js, jinaga_server_url, key_counts

from conftest import broker_url
from factbus import Bus, Fact, FactRef
from factbus.errors import ConfigError
from factbus.jinaga.bridge import Feed, JinagaBridge, parse_bridge_config
from factbus.sidecar.archive import FactArchive
from factbus.testing.brokers import drop_schema, unique
from factbus.testing.polling import eventually

pytestmark = pytest.mark.timeout(120)


def bridge_document(
    server: str, kafka: str, topic: str, store: str, feeds: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "factbus": {"transport": kafka, "topic": topic, "node": unique("app")},
        "jinaga": {"url": server, "store": store, "poll_interval": 0.2, "feed": feeds},
    }


async def test_jinaga_client_to_server_to_bridge_to_kafka_to_node(tmp_path: Path) -> None:
    server, kafka = jinaga_server_url(), broker_url("kafka")
    topic, tag = unique("jinaga-pull"), unique("root")
    root = {"type": "Bridge.Root", "fields": {"id": tag}}
    saved = await jinaga_js("save", server, {"facts": items(root, "Bridge.Item", "root", range(3))})
    hashes = saved["hashes"]
    received: dict[FactRef, Fact] = {}
    reader = Bus(kafka, f"sqlite:///{tmp_path}/reader.db", topic=topic, node=unique("reader"))
    reader.handler("*")(lambda fact: received.setdefault(fact.ref, fact))
    feed = {"root": root, "successor": "Bridge.Item", "role": "root"}
    config = parse_bridge_config(
        bridge_document(server, kafka, topic, f"sqlite:///{tmp_path}/bridge.db", [feed])
    )
    async with reader, JinagaBridge(config) as bridge:

        async def all_received() -> bool:
            return len(received) >= 4

        await eventually(all_received, 60, "the 4 facts on the factbus node")
        assert {ref.hash for ref in received if ref.type == "Bridge.Item"} == set(hashes[1:])
        assert FactRef("Bridge.Root", hashes[0]) in received
        assert received[FactRef("Bridge.Root", hashes[0])].fields == {"id": tag}
        # what came from the server is not saved back to it (no echo)
        assert await bridge.push_once() == 0
        assert bridge.stats.pulled == 4
        assert bridge.stats.pushed == 0


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_node_to_kafka_to_bridge_to_server_to_fresh_jinaga_client(
    tmp_path: Path, store: str
) -> None:
    server, kafka = jinaga_server_url(), broker_url("kafka")
    topic, tag = unique("jinaga-push"), unique("root")
    schema = unique("jbp", "_")
    pg = broker_url("postgres") if store == "postgres" else ""
    store_url = f"{pg}?schema={schema}" if pg else f"sqlite:///{tmp_path}/bridge.db"
    root = Fact("Bridge.Root", {"id": tag})
    children = [
        Fact("Bridge.Item", {"n": n, "note": 'a "quoted" é'}, {"root": root}) for n in range(3)
    ]
    config = parse_bridge_config(bridge_document(server, kafka, topic, store_url, []))
    writer = Bus(
        kafka, f"sqlite:///{tmp_path}/writer.db", topic=topic, node=unique("w"), consume=False
    )
    query = {
        "facts": [{"type": "Bridge.Root", "fields": {"id": tag}}],
        "given": 0,
        "successor": "Bridge.Item",
        "role": "root",
    }
    try:
        async with JinagaBridge(config) as bridge:
            await writer.publish(*children)
            await writer.aclose()

            async def all_pushed() -> bool:
                return bridge.stats.pushed >= 4

            await eventually(all_pushed, 60, "the bridge to save 4 facts to jinaga-server")
        found = await jinaga_js("query", server, query)
        assert {r["hash"] for r in found["results"]} == {c.hash for c in children}
        assert sorted(r["fields"]["n"] for r in found["results"]) == [0, 1, 2]
        assert all(r["fields"]["note"] == 'a "quoted" é' for r in found["results"])
    finally:
        if pg:
            await drop_schema(pg, schema)


async def test_bridge_command_restart_resumes_from_kept_bookmark(tmp_path: Path) -> None:
    server, kafka, pg = jinaga_server_url(), broker_url("kafka"), broker_url("postgres")
    topic, tag, schema = unique("jinaga-restart"), unique("root"), unique("jb", "_")
    root = {"type": "Bridge.Root", "fields": {"id": tag}}
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[factbus]
transport = "{kafka}"
topic = "{topic}"
node = "{unique("app")}"

[jinaga]
url = "{server}"
store = "{pg}?schema={schema}"
poll_interval = 0.2
push = false

[[jinaga.feed]]
root = {{ type = "Bridge.Root", fields = {{ id = "{tag}" }} }}
successor = "Bridge.Item"
role = "root"
"""
    )

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "factbus",
            "jinaga-bridge",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "FACTBUS_LOG_LEVEL": "warning"},
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"ready" in line, line
        return process

    async def stop(process: asyncio.subprocess.Process) -> None:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0

    def on_kafka(hashes: list[str]) -> Any:
        async def check() -> bool:
            counts = await asyncio.to_thread(key_counts, kafka, topic)
            return all(counts[h] >= 1 for h in hashes)

        return check

    try:
        first = await jinaga_js(
            "save", server, {"facts": items(root, "Bridge.Item", "root", range(2))}
        )
        process = await start()
        try:
            await eventually(on_kafka(first["hashes"]), 60, "the first facts on Kafka")
        finally:
            await stop(process)
        connection = await asyncpg.connect(pg)
        try:
            bookmarks = await connection.fetch(f'SELECT * FROM "{schema}".factbus_jinaga_bookmarks')
        finally:
            await connection.close()
        assert len(bookmarks) == 1 and bookmarks[0]["bookmark"]

        second = await jinaga_js(
            "save", server, {"facts": items(root, "Bridge.Item", "root", range(2, 4))}
        )
        process = await start()
        try:
            await eventually(on_kafka(second["hashes"][1:]), 60, "the new facts on Kafka")
            await asyncio.sleep(1.0)  # a few more polls: nothing else may come
        finally:
            await stop(process)
        counts = await asyncio.to_thread(key_counts, kafka, topic)
        expected = set(first["hashes"]) | set(second["hashes"])
        assert set(counts) == expected
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await drop_schema(pg, schema)


async def test_feed_specification_is_what_jinaga_js_sends() -> None:
    jinaga_server_url()  # the script that runs the server installed jinaga.js
    feed = Feed(Fact("Bridge.Root", {"id": "x"}).ref, "Bridge.Item", "root")
    request = {
        "root": {"type": feed.root.type, "hash": feed.root.hash},
        "successor": feed.successor,
        "role": feed.role,
    }
    described = await jinaga_js("spec", "-", request)
    assert feed.specification() == described["text"]


@pytest.mark.parametrize(
    ("jinaga", "complaint"),
    [
        ({}, "jinaga.url"),
        ({"url": "ftp://x"}, "jinaga.url"),
        ({"url": "http://x", "colour": 1}, "unknown keys colour"),
        ({"url": "http://x", "poll_interval": 0}, "jinaga.poll_interval"),
        ({"url": "http://x", "feed": [{"successor": "A", "role": "r"}]}, "jinaga.feed[0].root"),
        (
            {
                "url": "http://x",
                "feed": [{"root": {"type": "A", "hash": "h"}, "successor": "B", "role": "r"}],
            },
            "jinaga.feed[0].root.hash",
        ),
        (
            {
                "url": "http://x",
                "feed": [{"root": {"type": "A", "fields": {}}, "successor": "B c", "role": "r"}],
            },
            "jinaga.feed[0].successor",
        ),
        (
            {
                "url": "http://x",
                "feed": [{"root": {"type": "A", "fields": {}}, "successor": "B", "role": "r-1"}],
            },
            "jinaga.feed[0].role",
        ),
    ],
)
def test_bad_settings_are_named(jinaga: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_bridge_config({"factbus": {}, "jinaga": jinaga})


def test_missing_table_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[jinaga\]"):
        parse_bridge_config({"factbus": {}})


async def test_a_fact_whose_hash_does_not_match_is_not_published(tmp_path: Path) -> None:
    """The server's copy of a fact is corrupted in its database (fields changed, hash
    kept): the bridge refuses the page, publishes nothing of it, and goes on once the
    copy is repaired."""
    server, kafka = jinaga_server_url(), broker_url("kafka")
    store = os.environ.get(
        "FACTBUS_TEST_JINAGA_PG_STORE",
        "postgresql://factbus:factbus@127.0.0.1:5432/factbus_jinaga",
    )
    topic, tag = unique("jinaga-tamper"), unique("root")
    root = {"type": "Bridge.Root", "fields": {"id": tag}}
    saved = await jinaga_js("save", server, {"facts": items(root, "Bridge.Item", "root", [1])})
    item_hash = saved["hashes"][1]
    feed = {"root": root, "successor": "Bridge.Item", "role": "root"}
    config = parse_bridge_config(
        bridge_document(server, kafka, topic, f"sqlite:///{tmp_path}/bridge.db", [feed])
    )
    server_db = await asyncpg.connect(store)
    corrupt = "UPDATE fact SET data = jsonb_set(data, '{fields,n}', $2::jsonb) WHERE hash = $1"
    try:
        assert await server_db.execute(corrupt, item_hash, "2") == "UPDATE 1"
        async with JinagaBridge(config) as bridge:

            async def refused_twice() -> bool:
                return bridge.stats.errors >= 2

            await eventually(refused_twice, 30, "the bridge to refuse the corrupted page")
            assert bridge.stats.pulled == 0
            assert "but its content hashes to" in bridge.stats.last_error
            assert item_hash[:16] in bridge.stats.last_error
            assert await asyncio.to_thread(key_counts, kafka, topic) == {}
            assert await server_db.execute(corrupt, item_hash, "1") == "UPDATE 1"

            async def published() -> bool:
                return bridge.stats.pulled == 2

            await eventually(published, 60, "the repaired page on the bus")
        counts = await asyncio.to_thread(key_counts, kafka, topic)
        assert counts == {saved["hashes"][0]: 1, item_hash: 1}
    finally:
        await server_db.execute(corrupt, item_hash, "1")
        await server_db.close()


async def test_push_reads_the_fact_archive_and_resumes_at_its_cursor(tmp_path: Path) -> None:
    """The push queue is the store's FactArchive (no table of the bridge's own):
    every handled fact is archived, the push cursor is kept after each 201, and a
    restarted bridge pushes only what came after it."""
    server = jinaga_server_url()
    transport, tag = f"memory://{unique('jinaga-archive')}", unique("root")
    store = f"sqlite:///{tmp_path}/bridge.db"
    document = {
        "factbus": {"transport": transport, "topic": "t", "node": unique("app")},
        "jinaga": {"url": server, "store": store, "poll_interval": 0.2},
    }
    root = Fact("Bridge.Root", {"id": tag})
    first = [Fact("Bridge.Item", {"n": n}, {"root": root}) for n in range(3)]
    later = [Fact("Bridge.Item", {"n": n}, {"root": root}) for n in range(3, 5)]

    async def run_bridge(facts: list[Fact], pushed: int) -> None:
        async with JinagaBridge(parse_bridge_config(document)) as bridge:
            async with Bus(transport, "memory://", topic="t", node=unique("w"), consume=False) as w:
                await w.publish(*facts)

            async def all_pushed() -> bool:
                return bridge.stats.pushed >= pushed

            await eventually(all_pushed, 60, f"the bridge to save {pushed} facts")
            await bridge.bus.drain()
            await asyncio.sleep(0.5)  # a push loop that re-pushed old facts would count them
            assert bridge.stats.pushed == pushed

    await run_bridge(first, 4)  # the root travels as the items' ancestor
    async with FactArchive(store) as archive:
        kept, cursor = await archive.page(0, 100)
    assert {f.ref for f in kept} == {root.ref, *(f.ref for f in first)}
    with sqlite3.connect(tmp_path / "bridge.db") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        (bookmark,) = db.execute(
            "SELECT bookmark FROM factbus_jinaga_bookmarks WHERE feed = 'push'"
        ).fetchone()
    assert "factbus_jinaga_facts" not in tables
    assert bookmark == str(cursor)

    await run_bridge(later, 2)  # resumed after the cursor: the first four are not pushed again
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{server}/load",
            json={"references": [{"type": f.type, "hash": f.hash} for f in [*first, *later]]},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 200, response.text
    loaded = {(f["type"], f["hash"]) for f in response.json()["facts"]}
    assert {(f.type, f.hash) for f in [root, *first, *later]} <= loaded
