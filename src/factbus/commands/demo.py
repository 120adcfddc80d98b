"""Run a small shop on three nodes: facts shuffled and duplicated, nodes converge.

A publisher sends every fact of a shop (stores, customers, products, orders,
order lines, payments, shipments: a predecessor DAG) in a random order with
duplicates. Three nodes, each with its own SQLite store, project the facts into
per-customer totals. Each projection step needs its predecessors' effects, so a
fact handled early would fail loudly. The summary proves the nodes converged.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from factbus.bus import Bus
from factbus.fact import Fact, FactRef
from factbus.testing.scenario import shuffled_with_duplicates, state_digest
from factbus.urls import redact


def shop_facts(orders: int, seed: int) -> list[Fact]:
    """A shop's facts in causal order: the demo's domain."""
    rng = random.Random(seed)
    store = Fact("Shop.Store", {"name": "Corner Books", "city": "Lyon"})
    customers = [
        Fact("Shop.Customer", {"email": f"reader{i}@example.com"}, {"store": store})
        for i in range(max(3, orders // 10))
    ]
    products = [
        Fact(
            "Shop.Product",
            {"sku": f"BK-{i:03}", "title": f"Book {i}", "price": f"{5 + i * 1.5:.2f}"},
            {"store": store},
        )
        for i in range(12)
    ]
    price = {p.ref: Decimal(p.fields["price"]) for p in products}
    facts: list[Fact] = [store, *customers, *products]
    for n in range(orders):
        customer = rng.choice(customers)
        order = Fact(
            "Shop.Order",
            {"number": n, "placedAt": f"2026-11-{1 + n % 27:02}T10:00:00Z"},
            {"customer": customer},
        )
        lines = [
            Fact(
                "Shop.Order.Line",
                {"quantity": rng.randint(1, 3)},
                {"order": order, "product": product},
            )
            for product in rng.sample(products, rng.randint(1, 3))
        ]
        facts += [order, *lines]
        if rng.random() < 0.8:
            amount = sum(
                (price[line.predecessors["product"]] * line.fields["quantity"] for line in lines),  # type: ignore[index]
                Decimal(0),
            )
            paid = Fact(
                "Shop.Order.Paid", {"amount": str(amount)}, {"order": order, "lines": lines}
            )
            facts.append(paid)
            if rng.random() < 0.7:
                facts.append(
                    Fact(
                        "Shop.Order.Shipped",
                        {"carrier": rng.choice(["post", "courier"])},
                        {"paid": paid},
                    )
                )
    return facts


@dataclass
class Projection:
    """One node's read model, built only from facts in causal order."""

    customers: dict[str, str] = field(default_factory=dict)
    prices: dict[str, Decimal] = field(default_factory=dict)
    order_customer: dict[str, str] = field(default_factory=dict)
    order_total: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    paid: dict[str, str] = field(default_factory=dict)
    revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    shipped: int = 0
    handled: set[tuple[str, str]] = field(default_factory=set)
    violations: int = 0

    def attach(self, bus: Bus) -> None:
        on = bus.handler
        on("Shop.Store")(self._seen)
        on("Shop.Customer")(self.customer)
        on("Shop.Product")(self.product)
        on("Shop.Order")(self.order)
        on("Shop.Order.Line")(self.line)
        on("Shop.Order.Paid")(self.pay)
        on("Shop.Order.Shipped")(self.ship)

    def _seen(self, fact: Fact) -> None:
        if fact.ref in self.handled:
            self.violations += 1  # handled twice
        for pred in fact.predecessor_refs():
            if pred not in self.handled:
                self.violations += 1  # a predecessor not handled yet
        self.handled.add(fact.ref)

    def customer(self, fact: Fact) -> None:
        self._seen(fact)
        self.customers[fact.hash] = fact.fields["email"]

    def product(self, fact: Fact) -> None:
        self._seen(fact)
        self.prices[fact.hash] = Decimal(fact.fields["price"])

    def order(self, fact: Fact) -> None:
        self._seen(fact)
        self.order_customer[fact.hash] = self.customers[_one(fact, "customer")]

    def line(self, fact: Fact) -> None:
        self._seen(fact)
        self.order_total[_one(fact, "order")] += (
            self.prices[_one(fact, "product")] * fact.fields["quantity"]
        )

    def pay(self, fact: Fact) -> None:
        self._seen(fact)
        order = _one(fact, "order")
        if Decimal(fact.fields["amount"]) != self.order_total[order]:
            self.violations += 1  # a line was not handled before the payment
        self.paid[fact.hash] = order
        self.revenue[self.order_customer[order]] += Decimal(fact.fields["amount"])

    def ship(self, fact: Fact) -> None:
        self._seen(fact)
        if _one(fact, "paid") not in self.paid:
            self.violations += 1
        self.shipped += 1

    def digest(self) -> str:
        return state_digest({FactRef(t, h) for t, h in self.handled})


def _one(fact: Fact, role: str) -> str:
    ref = fact.predecessors[role]
    if not isinstance(ref, FactRef):
        raise TypeError(f"{fact.type}.{role} is a list of predecessors")
    return ref.hash


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport", default=None, help="transport URL (default: a fresh memory:// namespace)"
    )
    parser.add_argument("--orders", type=int, default=300, help="orders to generate (default 300)")
    parser.add_argument(
        "--duplicates",
        type=float,
        default=0.5,
        help="extra copies, as a share of all facts (default 0.5)",
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--store-dir",
        default=None,
        help="where the nodes' SQLite stores go (default: a temporary directory)",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--sidecar",
        action="store_true",
        help="instead: three sidecars project concurrent status edits, received in "
        "different orders, into identical tables served over HTTP",
    )


def run(args: argparse.Namespace) -> int:
    if args.sidecar:
        from factbus.commands.sidecar_demo import run_sidecar_demo

        return asyncio.run(run_sidecar_demo(args))
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    console = Console()
    run_id = uuid.uuid4().hex[:8]
    url = args.transport or f"memory://demo-{run_id}"
    topic = f"shop-{run_id}"
    facts = shop_facts(args.orders, args.seed)
    order = shuffled_with_duplicates(facts, duplicates=args.duplicates, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="factbus-demo-") as tmp:
        store_dir = Path(args.store_dir or tmp)
        console.print(
            f"[bold]factbus demo[/]: {len(facts)} facts of 7 types, sent as {len(order)} messages "
            f"(shuffled, {len(order) - len(facts)} duplicates) over [cyan]{redact(url)}[/] "
            f"to 3 nodes with SQLite stores in {store_dir}"
        )
        names = [f"node-{c}-{run_id}" for c in "abc"]
        projections = {name: Projection() for name in names}
        nodes = []
        for name in names:
            bus = Bus(url, f"sqlite:///{store_dir / name}.db", topic=topic, node=name)
            projections[name].attach(bus)
            nodes.append(bus)
        started = time.perf_counter()
        for bus in nodes:
            await bus.start()
        async with Bus(url, "memory://", topic=topic, node=f"till-{run_id}", consume=False) as till:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                sent = progress.add_task("published", total=len(order))
                tasks = {
                    n: progress.add_task(f"{n.rsplit('-', 1)[0]} handled", total=len(facts))
                    for n in names
                }
                for start in range(0, len(order), 50):
                    chunk = order[start : start + 50]
                    await till.publish(*chunk, ancestors=False)
                    progress.advance(sent, len(chunk))
                    _update(progress, tasks, projections)
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline and any(
                    len(p.handled) < len(facts) for p in projections.values()
                ):
                    _update(progress, tasks, projections)
                    await asyncio.sleep(0.05)
                _update(progress, tasks, projections)
        for bus in nodes:
            await bus.drain(timeout=args.timeout)
        elapsed = time.perf_counter() - started
        stats = {bus.settings.node_name: bus.stats for bus in nodes}
        for bus in nodes:
            await bus.aclose()

    # Fits an 80-column terminal (and a pipe, which rich renders 80 wide): short
    # headers, the digest's first 8 characters (equality is checked on the whole).
    table = Table(title="Summary", show_edge=False)
    for column, left in (
        ("node", True),
        ("handled", False),
        ("dups\nskipped", False),
        ("parked", False),
        ("out of\norder", False),
        ("state\ndigest", True),
        ("revenue", False),
        ("shipped", False),
    ):
        table.add_column(column, no_wrap=True, justify="left" if left else "right")
    digests, revenues = set(), set()
    for name in names:
        p, s = projections[name], stats[name]
        digests.add(p.digest())
        revenue = sum(p.revenue.values(), Decimal(0))
        revenues.add((revenue, p.shipped))
        table.add_row(
            name.rsplit("-", 1)[0],
            str(len(p.handled)),
            str(s.duplicates),
            str(s.parked),
            str(p.violations),
            p.digest()[:8],
            str(revenue),
            str(p.shipped),
        )
    console.print(table)
    converged = (
        len(digests) == 1
        and len(revenues) == 1
        and all(len(p.handled) == len(facts) and p.violations == 0 for p in projections.values())
    )
    if converged:
        console.print(
            f"[bold green]converged[/]: 3 nodes handled all {len(facts)} facts exactly once "
            f"(duplicates skipped), each after its predecessors (a fact that came first "
            f"was parked until they were handled), and agree on every total ({elapsed:.2f}s)."
        )
        return 0
    console.print("[bold red]NOT converged[/]: see the table above.")
    return 1


def _update(
    progress: Progress, tasks: dict[str, TaskID], projections: dict[str, Projection]
) -> None:
    for name, task in tasks.items():
        progress.update(task, completed=len(projections[name].handled))
