"""Jinaga's protocol on the sidecar ([sidecar] jinaga = "/jinaga"), with the real,
unmodified jinaga.js 6.11.3 client (tests/js/client.js) and real brokers:

- jinaga.js client -> sidecar /jinaga -> Kafka (RabbitMQ) -> another factbus node:
  the node receives the facts with the hashes jinaga.js computed;
- another node -> Kafka (RabbitMQ) -> sidecar -> a fresh jinaga.js client's query,
  and a subscription (streamed feed) that sees later facts arrive and go
  (cancellations);
- the protocol's refusals over HTTP (httpx), and a fuzz test: mutated graphs
  posted to a running sidecar are answered 201 or 4xx, never 5xx, and exactly
  the facts of the accepted ones reach the bus.

FACTBUS_FUZZ_HTTP (default 300) sets how many mutated graphs are posted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from graph_fuzz import GRAPH_TOKENS, mutate
from jinaga_harness import node_json
from test_jinaga_spec import jinaga_specs

from conftest import broker_url
from factbus import Bus, Fact, FactRef
from factbus.jinaga.graph import JinagaFormatError, fact_record, parse_graph, write_graph
from factbus.sidecar.config import parse_config
from factbus.sidecar.service import Sidecar
from factbus.testing.brokers import unique
from factbus.testing.polling import eventually

pytestmark = pytest.mark.timeout(180)

JS_DIR = Path(__file__).resolve().parents[1] / "js"
FUZZ_HTTP = int(os.environ.get("FACTBUS_FUZZ_HTTP", "300"))


def transport_url(name: str) -> str:
    if name == "memory":
        return f"memory://{unique('jinaga')}"
    return broker_url(name)


@asynccontextmanager
async def sidecar_and_node(
    tmp_path: Path, transport: str
) -> AsyncIterator[tuple[Sidecar, Bus, dict[FactRef, Fact]]]:
    """A sidecar serving /jinaga and another factbus node on the same topic."""
    url = transport_url(transport)
    topic = unique("jinaga-sidecar")
    document = {
        "factbus": {
            "transport": url,
            "store": f"sqlite:///{tmp_path}/sidecar.db",
            "topic": topic,
            "node": unique("sidecar"),
        },
        "sidecar": {"listen": "127.0.0.1:8081", "jinaga": "/jinaga"},  # port 0 given below
    }
    received: dict[FactRef, Fact] = {}
    node = Bus(url, f"sqlite:///{tmp_path}/node.db", topic=topic, node=unique("node"))
    node.handler("*")(lambda fact: received.setdefault(fact.ref, fact))
    sidecar = Sidecar(parse_config(document), listen="127.0.0.1:0")
    async with node, sidecar:

        async def ready() -> bool:
            return sidecar.ready

        await eventually(ready, 60, "the sidecar to be ready")
        yield sidecar, node, received


async def archived(sidecar: Sidecar, facts: Sequence[Fact], timeout: float, what: str) -> None:
    """Wait until the sidecar's archive holds every one of ``facts``."""
    refs = [f.ref for f in facts]

    async def all_there() -> bool:
        return len(await sidecar.archive.get(refs)) == len(refs)

    await eventually(all_there, timeout, what)


async def jinaga_js(command: str, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
    """``node tests/js/client.js <command> <endpoint>``: the unmodified jinaga.js client."""
    return await node_json(JS_DIR / "client.js", command, endpoint, request=request, timeout=90)


def shop(store_id: str) -> tuple[Fact, list[Fact]]:
    """A store and orders 1..3, order 2 cancelled, order 1 with lines a and b."""
    store = Fact("Shop.Store", {"identifier": store_id})
    orders = [Fact("Shop.Order", {"number": n}, {"store": store}) for n in (1, 2, 3)]
    cancelled = Fact("Shop.Order.Cancelled", {}, {"order": orders[1]})
    lines = [Fact("Shop.Line", {"sku": sku}, {"order": orders[0]}) for sku in ("a", "b")]
    return store, [store, *orders, cancelled, *lines]


# -- jinaga.js client <-> sidecar <-> broker <-> another node ------------------------


@pytest.mark.parametrize("transport", ["kafka", "amqp"])
async def test_jinaga_client_saves_reach_another_node_with_its_hashes(
    tmp_path: Path, transport: str
) -> None:
    async with sidecar_and_node(tmp_path, transport) as (sidecar, _, received):
        endpoint = f"{sidecar.url}/jinaga"
        store_id = unique("store")
        saved = await jinaga_js(
            "save",
            endpoint,
            {"store": store_id, "orders": [1, 2, 3], "cancel": [2], "lines": {"1": ["a", "b"]}},
        )
        refs = [FactRef(f["type"], f["hash"]) for f in saved["facts"]]
        assert len(refs) == 7

        async def all_there() -> bool:
            return all(ref in received for ref in refs)

        await eventually(all_there, 60, "jinaga.js's facts on the other node")
        _, expected = shop(store_id)
        # The same facts, built here from their content: same hashes as jinaga.js gave.
        assert set(refs) == {fact.ref for fact in expected}
        assert received[refs[0]].fields == {"identifier": store_id}


@pytest.mark.parametrize("transport", ["kafka", "amqp"])
async def test_node_facts_reach_jinaga_client_query_and_subscription(
    tmp_path: Path, transport: str
) -> None:
    async with sidecar_and_node(tmp_path, transport) as (sidecar, node, _):
        endpoint = f"{sidecar.url}/jinaga"
        store_id = unique("store")
        store, facts = shop(store_id)
        await node.publish(*facts)

        await archived(sidecar, facts, 60, "the node's facts in the sidecar's archive")
        result = await jinaga_js("query", endpoint, {"store": store_id})
        assert result == {
            "orders": [{"number": 1, "lines": ["a", "b"]}, {"number": 3, "lines": []}]
        }

        # A subscription (streamed feeds) sees a new order arrive and a cancellation remove one.
        watch = asyncio.create_task(
            jinaga_js("watch", endpoint, {"store": store_id, "expect": [3, 4], "timeout": 60})
        )
        await asyncio.sleep(3)  # let it load the current state first
        order4 = Fact("Shop.Order", {"number": 4}, {"store": store})
        order1 = facts[1]
        await node.publish(order4, Fact("Shop.Order.Cancelled", {}, {"order": order1}))
        assert await watch == {"orders": [3, 4]}


# -- the protocol over HTTP ----------------------------------------------------------


async def test_protocol_answers_and_refusals(tmp_path: Path) -> None:
    async with sidecar_and_node(tmp_path, "memory") as (sidecar, node, received):
        base = f"{sidecar.url}/jinaga"
        store, facts = shop(unique("store"))
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            options = await http.options("/save")
            assert "application/x-jinaga-graph-v1" in options.headers["accept-post"]

            graph = {"content-type": "application/x-jinaga-graph-v1"}
            assert (
                await http.post("/save", content=write_graph(facts[:3]), headers=graph)
            ).status_code == 201
            as_json = {"facts": [fact_record(f) for f in facts[3:]]}
            assert (await http.post("/save", json=as_json)).status_code == 201

            await archived(sidecar, facts, 30, "the saved facts in the archive")

            # Saved again with one new fact (jinaga.js resends closures): only that one travels.
            await node.drain()
            messages = node.stats.messages
            order9 = Fact("Shop.Order", {"number": 9}, {"store": store})
            again = write_graph([*facts[:3], order9])
            assert (await http.post("/save", content=again, headers=graph)).status_code == 201
            await node.drain()
            assert node.stats.messages == messages + 1

            loaded = (await http.post("/load", json={"references": [_ref(facts[-1])]})).json()
            # The line, its order and its store: predecessors first.
            assert [f["hash"] for f in loaded["facts"]] == [
                store.hash,
                facts[1].hash,
                facts[-1].hash,
            ]

            # Refusals name the problem; nothing is published.
            before = len(received)
            bad_cases: list[tuple[httpx.Response, int, str]] = [
                (
                    await http.post("/save", content=b'"T"\n{"p":3}\n{}\n\n', headers=graph),
                    400,
                    "predecessor 'p' index 3",
                ),
                (
                    await http.post(
                        "/save", json={"facts": [dict(fact_record(facts[1]), hash="x" * 88)]}
                    ),
                    400,
                    "claims hash",
                ),
                (
                    await http.post(
                        "/save",
                        content=b'"T"\n{}\n{"n":9007199254740993.5e400}\n\n',
                        headers=graph,
                    ),
                    400,
                    "graph line 3: the fields (JSON object) is not valid JSON",
                ),
                (
                    await http.post(
                        "/save",
                        json={
                            "facts": [
                                fact_record(Fact("T", {}, {"p": Fact("Unknown.Fact", {"i": 1})}))
                            ]
                        },
                    ),
                    400,
                    "neither in the request nor known",
                ),
                (
                    await http.post("/save", content=b"x", headers={"content-type": "text/csv"}),
                    415,
                    "content type 'text/csv'",
                ),
                (await http.post("/load", json={"refs": []}), 400, '"references" list'),
                (await http.post("/feeds", content=b"(p: T) {}"), 400, "has no declaration"),
                (
                    await http.post("/feeds", content=_two_givens(store).encode()),
                    400,
                    "exactly one given",
                ),
                (await http.get("/feeds/not-a-feed"), 404, "unknown feed id"),
            ]
            for response, status, message in bad_cases:
                assert response.status_code == status, response.text
                assert message in response.json()["message"]
                assert response.json()["error"]["message"] == response.json()["message"]
            await node.drain()
            assert len(received) == before

            # A feed read directly: all tuples, then nothing new with the bookmark.
            feeds = (await http.post("/feeds", content=_orders_of(store).encode())).json()["feeds"]
            assert len(feeds) == 2  # the negating feed (cancellations) and the main one
            first = (await http.get(f"/feeds/{feeds[1]}", params={"b": ""})).json()
            assert {r["hash"] for r in first["references"]} == {
                store.hash,
                facts[1].hash,
                facts[3].hash,
                order9.hash,
            }
            again = (await http.get(f"/feeds/{feeds[1]}", params={"b": first["bookmark"]})).json()
            assert again == {"references": [], "bookmark": first["bookmark"]}
            # A later order comes with the next read from that bookmark, and only it.
            order4 = Fact("Shop.Order", {"number": 4}, {"store": store})
            await node.publish(order4)

            await archived(sidecar, [order4], 30, "order 4 in the archive")
            later = (await http.get(f"/feeds/{feeds[1]}", params={"b": first["bookmark"]})).json()
            assert [r["hash"] for r in later["references"]] == [store.hash, order4.hash]
            assert later["bookmark"] != first["bookmark"]
            # A bookmark this server did not issue: 400 naming it (the feed exists; a 404
            # would say it does not), polling and streaming alike; jinaga-server answers 500.
            stream = {"accept": "application/x-jinaga-feed-stream"}
            tag = first["bookmark"].partition(".")[2]
            # this archive's tag, a cursor past what its 64-bit seq holds: refused, not a 500
            for bookmark in ("soon", f"{2**63}.{tag}", "12", "-1.x"):
                for headers in ({}, stream):
                    bad = await http.get(
                        f"/feeds/{feeds[1]}", params={"b": bookmark}, headers=headers
                    )
                    assert bad.status_code == 400, (bookmark, bad.text)
                    assert bad.json()["error"]["code"] == "invalid-bookmark"
                    assert (
                        f"bookmark {bookmark!r} is not one this server issued"
                        in (bad.json()["message"])
                    )
            # An unknown feed stays a 404, whatever its bookmark.
            unknown = await http.get("/feeds/not-a-feed", params={"b": "soon"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "unknown-feed"
            # Another replica's well-formed bookmark starts the feed over.
            other = await http.get(f"/feeds/{feeds[1]}", params={"b": "3.otherTag"})
            assert other.status_code == 200
            assert {r["hash"] for r in other.json()["references"]} == {
                r["hash"] for r in first["references"]
            } | {order4.hash}


def _ref(fact: Fact) -> dict[str, str]:
    return {"type": fact.type, "hash": fact.hash}


def _orders_of(store: Fact) -> str:
    return (
        f"let p1: Shop.Store = #{store.hash}\n\n(p1: Shop.Store) {{\n"
        "    u1: Shop.Order [\n        u1->store: Shop.Store = p1\n"
        "        !E {\n            u2: Shop.Order.Cancelled [\n"
        "                u2->order: Shop.Order = u1\n            ]\n        }\n    ]\n}\n"
    )


def _two_givens(store: Fact) -> str:
    return (
        f"let p1: Shop.Store = #{store.hash}\nlet p2: Shop.Store = #{store.hash}\n\n"
        "(p1: Shop.Store, p2: Shop.Store) {\n    u1: Shop.Order [\n"
        "        u1->store: Shop.Store = p1\n    ]\n}\n"
    )


# -- fuzz: bad graphs never crash the sidecar and never publish anything ------------------


def _mutations(seed: bytes, count: int) -> list[bytes]:
    rng = random.Random(20261129)
    out = []
    for _ in range(count):
        body = seed
        for _ in range(rng.randint(1, 4)):
            pos = rng.randint(0, len(body))
            op = rng.randint(0, 2)
            chunk = (
                rng.choice(GRAPH_TOKENS) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 3))
            )
            body = mutate(body, [(op, pos, chunk)])
        out.append(body)
    return out


async def test_fuzz_bad_graphs_over_http_publish_nothing(tmp_path: Path) -> None:
    async with sidecar_and_node(tmp_path, "memory") as (sidecar, node, received):
        store, facts = shop(unique("fuzz"))
        seed = write_graph(facts)
        accepted: set[FactRef] = set()
        counts = {"201": 0, "4xx": 0}
        graph = {"content-type": "application/x-jinaga-graph-v1"}
        async with httpx.AsyncClient(base_url=f"{sidecar.url}/jinaga", timeout=30) as http:
            for body in _mutations(seed, FUZZ_HTTP):
                response = await http.post("/save", content=body, headers=graph)
                try:
                    expected = parse_graph(body)
                except JinagaFormatError:
                    expected = None
                if expected is not None:
                    assert response.status_code == 201, response.text
                    counts["201"] += 1
                    accepted.update(f.ref for f in expected)
                else:
                    assert 400 <= response.status_code < 500, response.text
                    assert response.json()["message"]
                    counts["4xx"] += 1
        await node.drain()

        async def settled() -> bool:
            return accepted <= set(received)

        await eventually(settled, 30, "the accepted facts on the other node")
        print(f"\nHTTP graph fuzz: {counts['201']} accepted (201), {counts['4xx']} refused (4xx)")
        assert set(received) == accepted  # nothing from a refused graph reached the bus
        assert counts["4xx"] > counts["201"] > 0


def _readme_script(endpoint: str) -> Path:
    """The README's Jinaga snippet as a script in tests/js, pointed at ``endpoint``."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Jinaga\n") :]
    snippet = section[section.index("```js\n") + 6 : section.index("```\n", section.index("```js"))]
    script = JS_DIR / f"readme-{os.getpid()}.js"
    script.write_text(snippet.replace("http://127.0.0.1:8081/jinaga", endpoint))
    return script


async def test_readme_snippet_works(tmp_path: Path) -> None:
    """The README's Jinaga snippet, run as written against a sidecar (only the URL changed)."""
    async with sidecar_and_node(tmp_path, "memory") as (sidecar, node, received):
        store = Fact("Shop.Store", {"identifier": "north"})
        other = Fact("Shop.Order", {"number": 2}, {"store": store})  # from another node
        await node.publish(other)

        await archived(sidecar, [other], 30, "the other node's order in the archive")
        script = _readme_script(f"{sidecar.url}/jinaga")
        try:
            process = await asyncio.create_subprocess_exec(
                "node",
                script.name,
                cwd=JS_DIR,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            script.unlink()
        assert process.returncode == 0, err.decode()
        assert sorted(json.loads(out.decode().replace("'", '"'))) == [1, 2]

        async def saved() -> bool:
            return (
                FactRef("Shop.Order", Fact("Shop.Order", {"number": 1}, {"store": store}).hash)
                in received
            )

        await eventually(saved, 30, "the snippet's order on the other node")


async def test_feeds_of_each_supported_shape(tmp_path: Path) -> None:
    """The specification texts jinaga.js writes (tests/js/spec.js), served from the archive."""
    specs = jinaga_specs()
    store, facts = shop("north")  # spec.js declares the store "north"
    shipped = Fact("Shop.Shipment", {}, {"order": facts[1]})
    order1, order2, order3, cancelled, line_a, line_b = facts[1:]
    async with sidecar_and_node(tmp_path, "memory") as (sidecar, node, _):
        await node.publish(*facts, shipped)

        await archived(sidecar, [*facts, shipped], 30, "the facts in the archive")
        expected = {
            "successors": [{store, order1, order2, order3}],
            "notExists": [{store, order2, cancelled}, {store, order1, order3}],
            "exists": [{store, order1, shipped}],
            "twoSteps": [{store, order1, line_a, line_b}],  # tuples: orders with lines
            "projection": [
                {store, order2, cancelled},
                {store, order1, order3},
                {store, order1, line_a, line_b},
            ],
            "predecessor": [],
        }
        async with httpx.AsyncClient(base_url=f"{sidecar.url}/jinaga", timeout=30) as http:
            for name, feeds_facts in expected.items():
                response = await http.post("/feeds", content=specs[name]["request"].encode())
                assert response.status_code == 200, response.text
                feeds = response.json()["feeds"]
                got = []
                for feed in feeds:
                    page = (await http.get(f"/feeds/{feed}", params={"b": ""})).json()
                    got.append({FactRef(r["type"], r["hash"]) for r in page["references"]})
                assert got == [{f.ref for f in want} for want in feeds_facts], name
