"""``factbus demo --sidecar``: three sidecars converge to the same rows.

A shop's facts (customers, orders, status edits, a cancellation) include
concurrent status edits: two edits that replace the same prior value, one pair
later merged, one pair left in conflict. Each of three sidecars (memory
transport, its own SQLite database) receives every fact in a different random
order with duplicates (one topic per sidecar, so the order can differ), and
serves its ``orders`` table over HTTP. The demo reads the three tables through
``GET /tables/orders`` and shows that they are identical, with the unresolved
conflict shown as candidates.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from factbus.bus import Bus
from factbus.fact import Fact
from factbus.sidecar.config import parse_config
from factbus.sidecar.service import Sidecar
from factbus.testing.scenario import shuffled_with_duplicates
from factbus.testing.shop import shop_document

NODES = ("a", "b", "c")


def shop_with_edits() -> tuple[list[Fact], dict[str, str]]:
    """The facts, and what each order's row should show (for the summary)."""
    ada = Fact("Shop.Customer", {"email": "ada@example.com"})
    bob = Fact("Shop.Customer", {"email": "bob@example.com"})
    facts: list[Fact] = [ada, bob]
    story: dict[str, str] = {}

    def order(number: int, customer: Fact) -> Fact:
        fact = Fact("Shop.Order", {"number": number}, {"customer": customer})
        facts.append(fact)
        return fact

    def status(of: Fact, value: str, *prior: Fact) -> Fact:
        fact = Fact("Shop.Order.Status", {"value": value}, {"order": of, "prior": list(prior)})
        facts.append(fact)
        return fact

    o1 = order(1, ada)
    status(o1, "paid", status(o1, "placed"))
    story["1"] = "placed -> paid: one leaf"
    o2 = order(2, bob)
    placed = status(o2, "placed")
    status(o2, "shipped", placed)
    status(o2, "on hold", placed)
    story["2"] = "placed -> shipped | on hold, concurrently: a conflict, two candidates"
    o3 = order(3, ada)
    placed = status(o3, "placed")
    left, right = status(o3, "packed", placed), status(o3, "gift-wrapped", placed)
    status(o3, "packed and wrapped", left, right)
    story["3"] = "a conflict merged by a fact naming both as prior: one leaf"
    o4 = order(4, bob)
    status(o4, "placed")
    facts.append(Fact("Shop.Order.Cancelled", {"reason": "asked"}, {"order": o4}))
    story["4"] = "cancelled: the row is gone (unless = Shop.Order.Cancelled.order)"
    order(5, ada)
    story["5"] = "no status yet"
    return facts, story


def _handled(sidecar: Sidecar, count: int) -> bool:
    return sidecar.bus.stats.handled >= count


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


async def run_sidecar_demo(args: argparse.Namespace) -> int:
    console = Console()
    run_id = uuid.uuid4().hex[:8]
    transport = args.transport or f"memory://demo-sidecar-{run_id}"
    facts, story = shop_with_edits()
    with tempfile.TemporaryDirectory(prefix="factbus-demo-sidecar-") as tmp:
        store_dir = Path(args.store_dir or tmp)
        console.print(
            f"[bold]factbus demo --sidecar[/]: {len(facts)} shop facts with concurrent status "
            f"edits, each sent to 3 sidecars in a different order with duplicates, "
            f"SQLite databases in {store_dir}"
        )
        sidecars = []
        for name in NODES:
            node = f"sidecar-{name}-{run_id}"
            config = parse_config(
                shop_document(transport, f"sqlite:///{store_dir / node}.db", f"shop-{node}", node)
            )
            sidecars.append(Sidecar(config, listen="127.0.0.1:0"))
        started = time.perf_counter()
        tables: dict[str, list[dict[str, Any]]] = {}
        try:
            for sidecar in sidecars:
                await sidecar.start()
            for index, sidecar in enumerate(sidecars):
                order = shuffled_with_duplicates(
                    facts, duplicates=args.duplicates, seed=args.seed + index
                )
                console.print(
                    f"  {sidecar.settings.node_name.rsplit('-', 1)[0]} at {sidecar.url}: "
                    f"receives {len(order)} messages, first "
                    + ", ".join(f.type.rsplit(".", 1)[-1] for f in order[:4])
                    + ", ..."
                )
                async with Bus(
                    transport,
                    "memory://",
                    topic=sidecar.settings.topic,
                    node=f"till-{index}-{run_id}",
                    consume=False,
                ) as till:
                    for start in range(0, len(order), 3):  # a few at a time: some park
                        await till.publish(*order[start : start + 3], ancestors=False)
                        await asyncio.sleep(0.005)
            for sidecar in sidecars:
                await _until(functools.partial(_handled, sidecar, len(facts)), args.timeout)
                await sidecar.bus.drain(timeout=args.timeout)
            for sidecar in sidecars:
                await _until(functools.partial(getattr, sidecar, "ready"), args.timeout)
                ready = await asyncio.to_thread(_get, f"{sidecar.url}/readyz")
                body = await asyncio.to_thread(_get, f"{sidecar.url}/tables/orders?limit=1000")
                tables[sidecar.settings.node_name] = body["rows"]
                assert ready["status"] == "ready"
            stats = {s.settings.node_name: s.bus.stats for s in sidecars}
        finally:
            for sidecar in sidecars:
                await sidecar.aclose()
    elapsed = time.perf_counter() - started

    first = next(iter(tables.values()))
    table = Table(title="orders (GET /tables/orders on sidecar a)")
    for column in ("number", "status", "status_candidates", "what happened"):
        table.add_column(column)
    for row in sorted(first, key=lambda r: r["number"]):
        table.add_row(
            str(row["number"]),
            str(row["status"]),
            json.dumps(row["status_candidates"]),
            story.get(str(row["number"]), ""),
        )
    console.print(table)
    summary = Table(title="per sidecar")
    for column in ("sidecar", "handled", "duplicates skipped", "parked (then released)", "rows"):
        summary.add_column(column)
    for node, rows in tables.items():
        s = stats[node]
        summary.add_row(
            node.rsplit("-", 1)[0], str(s.handled), str(s.duplicates), str(s.parked), str(len(rows))
        )
    console.print(summary)
    dumps = {json.dumps(rows, sort_keys=True) for rows in tables.values()}
    conflict = [r for r in first if len(r["status_candidates"] or []) > 1]
    if len(dumps) == 1 and all(s.handled == len(facts) for s in stats.values()) and conflict:
        console.print(
            f"[bold green]converged[/]: 3 sidecars received the facts in different orders and "
            f"serve byte-identical rows; order {conflict[0]['number']}'s concurrent edits show "
            f"as candidates {conflict[0]['status_candidates']} ({elapsed:.2f}s)."
        )
        return 0
    console.print("[bold red]NOT converged[/]: the sidecars' rows differ (see above).")
    return 1
