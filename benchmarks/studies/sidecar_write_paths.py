"""What the sidecar's write paths cost next to ``Bus.publish`` in the same run.

Four ways to get N facts published, each until the broker confirmed every one,
on one transport and a SQLite store:

- ``bus.publish``: the library, 100 facts per call (the baseline);
- ``POST /facts`` x100: the HTTP API, 100 facts per request (httpx, one client);
- ``POST /facts`` x1: one fact per request, 8 requests in flight;
- outbox: N rows inserted in one SQLite transaction, until the sidecar has
  published and deleted them all (polling every 0.2 s).

Every figure is facts/s and its ratio to ``bus.publish`` measured in the same
process; the sidecar also projects what it receives meanwhile (a customers
table), as it would in production.

    .venv/bin/python benchmarks/studies/sidecar_write_paths.py [--facts 5000] [--transport URL]

Results are written up in docs/sidecar.md ("What the write paths cost").
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from factbus import Fact
from factbus.sidecar.config import parse_config
from factbus.sidecar.service import Sidecar


def _document(transport: str, store: str, run: str) -> dict[str, Any]:
    return {
        "factbus": {"transport": transport, "store": store, "topic": f"bench-{run}", "node": run},
        "sidecar": {
            "outbox": "outbox",
            "table": [
                {"name": "customers", "fact": "Shop.Customer", "columns": {"email": "fields.email"}}
            ],
        },
    }


async def _until(condition: Any) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


async def _drained(sidecar: Sidecar, handled: int) -> None:
    """Wait until the sidecar projected everything so far: phases do not overlap
    (the consumer shares the event loop with the HTTP server and the outbox)."""
    await _until(lambda: sidecar.bus.stats.handled >= handled)
    await sidecar.bus.drain()


def _facts(n: int, tag: str) -> list[Fact]:
    return [Fact("Shop.Customer", {"email": f"{tag}-{i}@example.com"}) for i in range(n)]


def _body(fact: Fact) -> dict[str, Any]:
    return {"type": fact.type, "fields": dict(fact.fields)}


async def measure(transport: str, n: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.db"
        config = parse_config(_document(transport, f"sqlite:///{path}", run))
        async with (
            Sidecar(config, listen="127.0.0.1:0") as sidecar,
            httpx.AsyncClient(base_url=str(sidecar.url), timeout=120) as client,
        ):
            facts = _facts(n, "lib")
            started = time.perf_counter()
            for i in range(0, n, 100):
                await sidecar.publish(facts[i : i + 100])
            rates["bus.publish (100/call)"] = n / (time.perf_counter() - started)
            await _drained(sidecar, n)
            projected = n / (time.perf_counter() - started)

            facts = _facts(n, "http100")
            started = time.perf_counter()
            for i in range(0, n, 100):
                body = {"facts": [_body(f) for f in facts[i : i + 100]]}
                response = await client.post("/facts", content=orjson.dumps(body))
                assert response.status_code == 201, response.text
            rates["POST /facts (100/request)"] = n / (time.perf_counter() - started)
            await _drained(sidecar, 2 * n)

            facts = _facts(n, "http1")
            queue: asyncio.Queue[Fact] = asyncio.Queue()
            for fact in facts:
                queue.put_nowait(fact)

            async def poster() -> None:
                while not queue.empty():
                    body = {"facts": [_body(queue.get_nowait())]}
                    response = await client.post("/facts", content=orjson.dumps(body))
                    assert response.status_code == 201, response.text

            started = time.perf_counter()
            await asyncio.gather(*(poster() for _ in range(8)))
            rates["POST /facts (1/request, 8 in flight)"] = n / (time.perf_counter() - started)
            await _drained(sidecar, 3 * n)

            rows = [(orjson.dumps(_body(f)).decode(),) for f in _facts(n, "outbox")]
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
            started = time.perf_counter()
            db.execute("BEGIN")
            db.executemany("INSERT INTO outbox (fact) VALUES (?)", rows)
            db.execute("COMMIT")
            await _until(lambda: not db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            rates["outbox (one transaction)"] = n / (time.perf_counter() - started)
            db.close()
            await _drained(sidecar, 4 * n)
    rates["(for reference) received and projected into the table"] = projected
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=5000)
    parser.add_argument("--transport", default=None, help="default: a fresh memory:// namespace")
    args = parser.parse_args()
    transport = args.transport or f"memory://bench-{uuid.uuid4().hex[:8]}"
    rates = asyncio.run(measure(transport, args.facts))
    base = rates["bus.publish (100/call)"]
    print(f"{args.facts} facts on {transport.split('://')[0]}://, SQLite store")
    print("| write path | facts/s | ratio to bus.publish |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
