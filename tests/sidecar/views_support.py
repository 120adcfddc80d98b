"""Shared pieces of the sidecar view tests: the shop configuration, a random
shop fact set, the views computed directly from a fact set, sidecars (a Bus with
Views attached) on SQLite or PostgreSQL, publishing to them, and table dumps."""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from factbus import Bus, Fact
from factbus.sidecar.config import SidecarConfig, parse_config
from factbus.sidecar.views import Views
from factbus.testing.brokers import broker_url, unique, with_options
from factbus.testing.shop import shop_views


def shop_config(**sidecar: Any) -> SidecarConfig:
    """The shop example's views (with a nested ``tag`` column); ``sidecar`` adds
    or replaces ``[sidecar]`` keys."""
    views = shop_views(tag="fields.meta.tag")
    return parse_config({"factbus": {"topic": "shop"}, "sidecar": {**views, **sidecar}})


TABLES = ("orders", "customers", "open_orders")
STATUSES = ("new", "paid", "packed", "shipped", "held")


def shop_facts(
    seed: int, *, customers: int = 2, orders: int = 4, edits: int = 4, cancels: int = 3
) -> list[Fact]:
    """A random shop, topologically ordered: customers, orders, concurrent status
    edits (each names a random subset of earlier edits as prior), cancellations,
    some of them revoked, shipments."""
    rng = random.Random(seed)
    facts: list[Fact] = []
    people = [Fact("Shop.Customer", {"name": f"c{i}-{seed}"}) for i in range(customers)]
    facts += people
    order_facts = []
    for i in range(orders):
        fields: dict[str, Any] = {"number": i}
        if rng.random() < 0.5:
            fields["meta"] = {"tag": rng.choice("xyz")}
        order = Fact("Shop.Order", fields, {"customer": rng.choice(people)})
        order_facts.append(order)
        facts.append(order)
    for order in order_facts:
        history: list[Fact] = []
        for j in range(rng.randint(0, edits)):
            prior = [h for h in history if rng.random() < 0.5]
            status = Fact(
                "Shop.Order.Status",
                {"value": rng.choice(STATUSES), "n": j},
                {"order": order, "prior": prior},
            )
            history.append(status)
            facts.append(status)
    for j in range(rng.randint(0, cancels)):
        cancelled = Fact("Shop.Order.Cancelled", {"n": j}, {"order": rng.choice(order_facts)})
        facts.append(cancelled)
        if rng.random() < 0.5:
            facts.append(Fact("Shop.Order.Cancelled.Revoked", {"n": j}, {"cancelled": cancelled}))
    for order in order_facts:
        if rng.random() < 0.3:
            facts.append(Fact("Shop.Order.Shipped", {}, {"order": order}))
    return facts


def expected_rows(facts: Sequence[Fact]) -> dict[str, list[dict[str, Any]]]:
    """The views computed directly from the fact set (no order, no store)."""
    unique = {f.ref: f for f in facts}
    by_type: dict[str, list[Fact]] = {}
    for fact in unique.values():
        by_type.setdefault(fact.type, []).append(fact)
    revoked = {
        r.predecessors["cancelled"].hash  # type: ignore[union-attr]
        for r in by_type.get("Shop.Order.Cancelled.Revoked", [])
    }
    cancelled = {
        c.predecessors["order"].hash  # type: ignore[union-attr]
        for c in by_type.get("Shop.Order.Cancelled", [])
        if c.hash not in revoked
    }
    shipped = {s.predecessors["order"].hash for s in by_type.get("Shop.Order.Shipped", [])}  # type: ignore[union-attr]
    statuses: dict[str, list[Fact]] = {}
    for status in by_type.get("Shop.Order.Status", []):
        statuses.setdefault(status.predecessors["order"].hash, []).append(status)  # type: ignore[union-attr]
    orders = []
    for order in by_type.get("Shop.Order", []):
        if order.hash in cancelled:
            continue
        mine = statuses.get(order.hash, [])
        named = {p.hash for s in mine for p in s.predecessors["prior"]}  # type: ignore[union-attr]
        leaves = sorted((s for s in mine if s.hash not in named), key=lambda s: s.hash)
        values = [s.fields["value"] for s in leaves]
        meta = order.fields.get("meta")
        orders.append(
            {
                "hash": order.hash,
                "number": order.fields["number"],
                "customer": order.predecessors["customer"].hash,  # type: ignore[union-attr]
                "tag": meta["tag"] if meta else None,
                "status": values[-1] if values else None,
                "status_candidates": values,
            }
        )
    customers = [
        {"hash": c.hash, "name": c.fields["name"]} for c in by_type.get("Shop.Customer", [])
    ]
    open_orders = [
        {"hash": o.hash, "number": o.fields["number"]}
        for o in by_type.get("Shop.Order", [])
        if o.hash not in shipped
    ]
    return {
        name: sorted(rows, key=lambda r: r["hash"])
        for name, rows in (
            ("orders", orders),
            ("customers", customers),
            ("open_orders", open_orders),
        )
    }


KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.broker("postgres"))]
"""The kinds of database :func:`databases` makes, as a ``kind`` parameter list."""


@dataclass
class Database:
    """A store URL for one sidecar: an SQLite file, or a fresh PostgreSQL schema."""

    url: str
    kind: str
    path: Path | None = None
    base: str = ""
    schema: str = ""


@asynccontextmanager
async def databases(kind: str, count: int, tmp: Path) -> AsyncIterator[list[Database]]:
    """``count`` empty databases of ``kind`` (sqlite or postgres), removed afterwards."""
    if kind == "sqlite":
        out = []
        for i in range(count):
            path = tmp / f"sidecar-{uuid.uuid4().hex[:8]}-{i}.db"
            out.append(Database(f"sqlite:///{path}", kind, path=path))
        yield out
        return
    base = broker_url("postgres")
    schemas = [f"{unique('fbsc', '_')}_{i}" for i in range(count)]
    conn = await asyncpg.connect(base)
    try:
        for schema in schemas:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield [
            Database(with_options(base, schema=s, search_path=s), kind, base=base, schema=s)
            for s in schemas
        ]
    finally:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def dump(db: Database, table: str) -> bytes:
    """The table's rows in hash order, exactly as the database holds them."""
    if db.kind == "sqlite":
        assert db.path is not None
        conn = sqlite3.connect(db.path)
        try:
            rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY hash').fetchall()
            columns = [d[0] for d in conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description]
        finally:
            conn.close()
        return repr((columns, rows)).encode()
    conn = await asyncpg.connect(db.base)
    try:
        rows = await conn.fetch(
            f'SELECT row_to_json(t)::text FROM "{db.schema}"."{table}" t ORDER BY hash COLLATE "C"'
        )
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows).encode()


@asynccontextmanager
async def sidecar(
    transport: str, db: Database, config: SidecarConfig, node: str, **options: Any
) -> AsyncIterator[tuple[Bus, Views]]:
    """A started Bus with the views attached, on ``db``."""
    bus = Bus(transport, db.url, topic="shop", node=node, **options)
    views = Views(config, store_url=db.url)
    views.attach(bus)
    await views.open()
    try:
        async with bus:
            yield bus, views
    finally:
        await views.aclose()


async def deliver(transport: str, facts: Sequence[Fact], per_call: int = 100) -> None:
    """Publish ``facts`` in this order to the topic of :func:`sidecar`, ``per_call``
    facts per ``publish`` call, without their ancestors."""
    async with Bus(transport, "memory://", topic="shop", node="pub", consume=False) as pub:
        for start in range(0, len(facts), per_call):
            await pub.publish(*facts[start : start + per_call], ancestors=False)


async def all_rows(views: Views, table: str, page: int = 7) -> list[dict[str, Any]]:
    """Every row of ``table`` through :meth:`Views.rows`, paging by ``page``."""
    out: list[dict[str, Any]] = []
    after = None
    while True:
        rows = await views.rows(table, limit=page, after=after)
        out += rows
        if len(rows) < page:
            return out
        after = rows[-1]["hash"]
