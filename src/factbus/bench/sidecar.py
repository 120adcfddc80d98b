"""``factbus bench --sidecar``: facts/s projected into views, next to the plain
handler pipeline, on the same store kinds in the same run.

Each cell drains one backlog: a shop workload (customers, orders, status edits
with concurrent branches and merges, cancellations, some revoked, shipments;
every fact changes a view) is published on a ``memory://`` topic while the
consumer's queue exists but nobody consumes, then a Bus drains it. Rate =
distinct facts / seconds from the bus's start to the last fact handled. The
bus either has one trivial sync handler per fact type (**plain**: the handler
pipeline with that store) or the sidecar's :class:`~factbus.sidecar.views.Views`
attached (**sidecar**: archive + three tables + a mutable property + unless,
written in the step's transaction). Cells alternate plain/sidecar ``repeat``
times per store; the median of each is reported with the ratio sidecar/plain.

Stores: SQLite in a temporary directory, and PostgreSQL when a URL is given
(a fresh schema per cell, dropped afterwards).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factbus.bus import Bus
from factbus.fact import Fact
from factbus.sidecar.config import SidecarConfig, parse_config
from factbus.sidecar.views import Views
from factbus.testing.shop import shop_views
from factbus.transport.memory import MemoryTransport

TOPIC = "shop"
TYPES = (
    "Shop.Customer",
    "Shop.Order",
    "Shop.Order.Status",
    "Shop.Order.Cancelled",
    "Shop.Order.Cancelled.Revoked",
    "Shop.Order.Shipped",
)


def shop_config() -> SidecarConfig:
    """The views the benchmark projects (the shop example's, with a note column)."""
    return parse_config({"factbus": {"topic": TOPIC}, "sidecar": shop_views(note="fields.note")})


def shop_workload(count: int, seed: int, payload: int) -> list[Fact]:
    """About ``count`` shop facts in causal order (each distinct)."""
    rng = random.Random(seed)
    note = "x" * payload
    facts: list[Fact] = []
    customers: list[Fact] = []
    n = 0
    while len(facts) < count:
        if not customers or rng.random() < 0.05:
            customer = Fact("Shop.Customer", {"name": f"c{len(customers)}-{seed}"})
            customers.append(customer)
            facts.append(customer)
        order = Fact("Shop.Order", {"number": n, "note": note}, {"customer": rng.choice(customers)})
        n += 1
        facts.append(order)
        leaves: list[Fact] = []
        for step in range(rng.randint(1, 5)):
            prior = leaves if rng.random() < 0.8 else leaves[:1]
            status = Fact(
                "Shop.Order.Status",
                {"value": rng.choice(("new", "paid", "packed", "held")), "step": step},
                {"order": order, "prior": prior},
            )
            leaves = [status, *[p for p in leaves if p not in prior]]
            facts.append(status)
        roll = rng.random()
        if roll < 0.2:
            cancelled = Fact("Shop.Order.Cancelled", {}, {"order": order})
            facts.append(cancelled)
            if rng.random() < 0.3:
                facts.append(Fact("Shop.Order.Cancelled.Revoked", {}, {"cancelled": cancelled}))
        elif roll < 0.6:
            facts.append(Fact("Shop.Order.Shipped", {}, {"order": order}))
    return facts[:count]


@dataclass
class SidecarCell:
    """One store kind: rates of each run (facts/s)."""

    store: str
    plain: list[float] = field(default_factory=list)
    sidecar: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)
    """CPU µs per fact of this process (all threads) while draining."""
    sidecar_cpu: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.sidecar) / statistics.median(self.plain)

    @property
    def cpu_ratio(self) -> float:
        """plain CPU per fact / sidecar CPU per fact: the rate ratio a CPU-bound,
        otherwise idle machine would show."""
        return statistics.median(self.plain_cpu) / statistics.median(self.sidecar_cpu)

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "plain_facts_per_s": self.plain,
            "sidecar_facts_per_s": self.sidecar,
            "plain_median": statistics.median(self.plain),
            "sidecar_median": statistics.median(self.sidecar),
            "ratio": self.ratio,
            "plain_cpu_us_per_fact": self.plain_cpu,
            "sidecar_cpu_us_per_fact": self.sidecar_cpu,
            "cpu_ratio": self.cpu_ratio,
        }


async def _drain_once(
    store_url: str, facts: list[Fact], sidecar: bool, batch_size: int
) -> tuple[float, float]:
    """(facts/s, CPU µs per fact) of one drain."""
    transport = f"memory://bench-sidecar-{uuid.uuid4().hex[:8]}"
    node = "bench-node"
    # Create the node's queue first, so the backlog waits for it.
    holder = MemoryTransport(transport)
    await holder.connect()
    subscription = await holder.subscribe(TOPIC, node)
    await subscription.aclose()
    async with Bus(transport, "memory://", topic=TOPIC, node="bench-pub", consume=False) as pub:
        for start in range(0, len(facts), 1000):
            await pub.publish(*facts[start : start + 1000], ancestors=False)
    bus = Bus(transport, store_url, topic=TOPIC, node=node, batch_size=batch_size)
    views: Views | None = None
    if sidecar:
        views = Views(shop_config(), store_url=store_url)
        views.attach(bus)
        await views.open()
    else:
        for fact_type in TYPES:
            bus.handler(fact_type)(_nothing)
    started, cpu = time.perf_counter(), time.process_time()
    await bus.start()
    while bus.stats.handled < len(facts):  # noqa: ASYNC110 - the stats are the signal
        await asyncio.sleep(0.005)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await bus.aclose()
    if views is not None:
        await views.aclose()
    await holder.aclose()
    return len(facts) / elapsed, cpu * 1e6 / len(facts)


def _nothing(fact: Fact) -> None:
    return None


async def run_sidecar_bench(
    *,
    facts: int = 20_000,
    payload: int = 100,
    repeat: int = 3,
    postgres: str = "",
    batch_size: int = 512,
    seed: int = 1,
) -> list[SidecarCell]:
    """Measure every cell (see the module docstring)."""
    workload = shop_workload(facts, seed, payload)
    cells: list[SidecarCell] = []
    with tempfile.TemporaryDirectory(prefix="factbus-bench-sidecar-") as tmp:
        cell = SidecarCell("sqlite")
        for i in range(repeat):
            for sidecar in (False, True):
                path = Path(tmp) / f"{'s' if sidecar else 'p'}{i}.db"
                rate, cpu = await _drain_once(f"sqlite:///{path}", workload, sidecar, batch_size)
                (cell.sidecar if sidecar else cell.plain).append(rate)
                (cell.sidecar_cpu if sidecar else cell.plain_cpu).append(cpu)
        cells.append(cell)
    if postgres:
        import asyncpg

        cell = SidecarCell("postgresql")
        for _ in range(repeat):
            for sidecar in (False, True):
                schema = f"fbbench_{uuid.uuid4().hex[:10]}"
                sep = "&" if "?" in postgres else "?"
                url = f"{postgres}{sep}schema={schema}&search_path={schema}"
                conn = await asyncpg.connect(postgres)
                await conn.execute(f'CREATE SCHEMA "{schema}"')
                try:
                    rate, cpu = await _drain_once(url, workload, sidecar, batch_size)
                finally:
                    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                    await conn.close()
                (cell.sidecar if sidecar else cell.plain).append(rate)
                (cell.sidecar_cpu if sidecar else cell.plain_cpu).append(cpu)
        cells.append(cell)
    return cells
