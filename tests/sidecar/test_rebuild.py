"""Rebuild: the archive replayed into new tables that replace the old ones
atomically; the old ones stay readable meanwhile, and facts handled during the
rebuild end up in the new ones. Start-up: missing tables are built from the
archive, additive changes applied, incompatible ones refused."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from views_support import (
    KINDS,
    TABLES,
    all_rows,
    databases,
    deliver,
    dump,
    expected_rows,
    shop_config,
    shop_facts,
    sidecar,
)

from factbus import Bus, Fact
from factbus.errors import ConfigError
from factbus.sidecar.archive import FactArchive
from factbus.sidecar.config import parse_config
from factbus.sidecar.rebuild import rebuild
from factbus.sidecar.views import UnknownTable, Views
from factbus.testing.commands import run_factbus


def many_facts(seeds: range) -> list[Fact]:
    out: list[Fact] = []
    for seed in seeds:
        out += shop_facts(seed, orders=5, edits=4, cancels=3)
    return list({f.ref: f for f in out}.values())


@pytest.mark.parametrize("kind", KINDS)
async def test_rebuild_replaces_tables_while_they_stay_readable(kind: str, tmp_path: Path) -> None:
    first, later = many_facts(range(25)), many_facts(range(100, 110))
    config = shop_config()
    transport = f"memory://{uuid.uuid4().hex[:8]}"
    async with (
        databases(kind, 1, tmp_path) as (db,),
        sidecar(transport, db, config, "s") as (bus, views),
    ):
        await deliver(transport, first)
        await bus.drain()
        before = {t: await all_rows(views, t, page=1000) for t in TABLES}
        assert before == expected_rows(first)
        dumps = {t: await dump(db, t) for t in TABLES}

        # 1. Nothing new meanwhile: every read during the rebuild sees the full
        # old table; afterwards the tables are byte for byte the same.
        reader = Views(config, store_url=db.url)
        snapshots: list[bool] = []
        done = asyncio.Event()

        async def read_all_the_time() -> None:
            while not done.is_set():
                rows = await reader.rows("orders", limit=100_000)
                snapshots.append(rows == before["orders"])
                await asyncio.sleep(0)

        task = asyncio.create_task(read_all_the_time())
        result = await rebuild(config, store_url=db.url, chunk=50)
        done.set()
        await task
        await reader.aclose()
        assert result.facts == len(first)
        assert result.rows == {t: len(before[t]) for t in TABLES}
        assert len(snapshots) >= 3 and all(snapshots)
        assert {t: await dump(db, t) for t in TABLES} == dumps

        # 2. Facts keep arriving during a rebuild of one table: they end up in it.
        rebuilding = asyncio.create_task(rebuild(config, ["orders"], store_url=db.url, chunk=40))
        await deliver(transport, later)
        await rebuilding
        await bus.drain()
        everything = expected_rows(first + later)
        for table in TABLES:
            assert await all_rows(views, table, page=1000) == everything[table], table


@pytest.mark.parametrize("kind", KINDS)
async def test_start_builds_new_tables_applies_additions_refuses_changes(
    kind: str, tmp_path: Path
) -> None:
    facts = many_facts(range(5))
    expected = expected_rows(facts)
    transport = f"memory://{uuid.uuid4().hex[:8]}"
    plain = shop_config()
    async with databases(kind, 1, tmp_path) as (db,):
        async with sidecar(transport, db, plain, "s") as (bus, _):
            await deliver(transport, facts)
            await bus.drain()

        # A new table, and a new column on an old one: built from the archive.
        raw = plain.raw
        raw["sidecar"]["table"][1]["columns"]["name_again"] = "fields.name"
        raw["sidecar"]["table"].append(
            {"name": "statuses", "fact": "Shop.Order.Status", "columns": {"value": "fields.value"}}
        )
        grown = parse_config(raw)
        views = Views(grown, store_url=db.url)
        await views.open()
        customers = await all_rows(views, "customers")
        assert customers == [{**r, "name_again": r["name"]} for r in expected["customers"]]
        statuses = await all_rows(views, "statuses")
        assert {r["hash"] for r in statuses} == {
            f.hash for f in facts if f.type == "Shop.Order.Status"
        }
        assert await all_rows(views, "orders") == expected["orders"]
        assert views.columns("customers") == ["hash", "name", "name_again"]
        with pytest.raises(UnknownTable, match="no table 'nope'"):
            await views.rows("nope")
        await views.aclose()

        # An incompatible change is refused, naming the rebuild command; the
        # rebuild applies it; then the sidecar starts.
        raw["sidecar"]["table"][0]["columns"]["number"] = "fields.meta.tag"
        changed = parse_config(raw)
        views = Views(changed, store_url=db.url)
        with pytest.raises(ConfigError, match=r"column 'number' changed.*factbus sidecar rebuild"):
            await views.open()
        await views.aclose()
        await rebuild(changed, ["orders"], store_url=db.url)
        views = Views(changed, store_url=db.url)
        await views.open()
        rows = await all_rows(views, "orders")
        assert [r["number"] for r in rows] == [r["tag"] for r in expected["orders"]]
        await views.aclose()
        with pytest.raises(ConfigError, match=r"no \[\[sidecar.table\]\] is named 'nope'"):
            await rebuild(changed, ["nope"], store_url=db.url)


async def test_a_foreign_table_of_the_same_name_is_refused(tmp_path: Path) -> None:
    async with databases("sqlite", 1, tmp_path) as (db,):
        assert db.path is not None
        import sqlite3

        conn = sqlite3.connect(db.path)
        conn.execute("CREATE TABLE orders (id INTEGER)")
        conn.commit()
        conn.close()
        views = Views(shop_config(), store_url=db.url)
        with pytest.raises(ConfigError, match="'orders': a table of that name exists"):
            await views.open()
        await views.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_archive_reads(kind: str, tmp_path: Path) -> None:
    facts = shop_facts(3, orders=3, edits=3, cancels=2)
    transport = f"memory://{uuid.uuid4().hex[:8]}"
    async with databases(kind, 1, tmp_path) as (db,):
        async with sidecar(transport, db, shop_config(), "s") as (bus, _):
            await deliver(transport, list(reversed(facts)))
            await bus.drain()
        async with FactArchive(db.url) as archive:
            assert await archive.count() == len(facts)
            seen: list[Fact] = []
            cursor = 0
            while True:
                page, cursor_next = await archive.page(cursor, 4)
                if not page:
                    assert cursor_next == cursor
                    break
                seen += page
                cursor = cursor_next
            assert sorted(f.hash for f in seen) == sorted(f.hash for f in facts)
            position = {f.ref: i for i, f in enumerate(seen)}
            for fact in seen:  # seq order is causal
                assert all(position[p] < position[fact.ref] for p in fact.predecessor_refs())
            status = next(f for f in facts if f.type == "Shop.Order.Status")
            closure = await archive.closure([status.ref])
            refs: Any = [f.ref for f in closure]
            assert refs[-1] == status.ref or status.ref in refs
            assert set(refs) >= set(status.predecessor_refs())
            for i, fact in enumerate(closure):
                assert all(p in refs[:i] for p in fact.predecessor_refs())
            order = status.predecessors["order"]
            succ = await archive.successors(order, "order", "Shop.Order.Status")  # type: ignore[arg-type]
            assert set(succ) == {
                f.ref
                for f in facts
                if f.type == "Shop.Order.Status" and f.predecessors["order"] == order
            }
            got = await archive.get([status.ref, order])  # type: ignore[list-item]
            assert got[status.ref] == status and set(got) == {status.ref, order}
            with pytest.raises(ValueError, match="limit"):
                await archive.page(0, 0)


def test_views_need_the_bus_store_and_an_sql_store(tmp_path: Path) -> None:
    config = shop_config()
    with pytest.raises(ConfigError, match=r"sqlite:/// or postgresql:// store, not memory://"):
        Views(config, store_url="memory://")
    views = Views(config, store_url=f"sqlite:///{tmp_path / 'a.db'}")
    bus = Bus("memory://x", f"sqlite:///{tmp_path / 'b.db'}", node="n")
    with pytest.raises(ConfigError, match="is not the views' database"):
        views.attach(bus)


async def test_a_view_table_named_facts_is_rebuilt_and_reported(tmp_path: Path) -> None:
    """The result names the replayed facts apart from the tables: a table called
    ``facts`` is counted like any other, by the API and by the command."""
    store = f"sqlite:///{tmp_path / 'app.db'}"
    transport = f"memory://{uuid.uuid4().hex[:8]}"
    document = {
        "factbus": {"transport": transport, "store": store, "topic": "shop", "node": "s"},
        "sidecar": {
            "table": [
                {"name": "facts", "fact": "Shop.Customer", "columns": {"email": "fields.email"}}
            ]
        },
    }
    config = parse_config(document)
    customers = [Fact("Shop.Customer", {"email": f"c{n}@example.com"}) for n in range(3)]
    orders = [Fact("Shop.Order", {"number": n}, {"customer": customers[0]}) for n in range(4)]
    views = Views(config, store_url=store)
    bus = Bus(transport, store, topic="shop", node="s")
    views.attach(bus)
    await views.open()
    try:
        async with bus:
            await deliver(transport, [*customers, *orders])
            await bus.drain()
    finally:
        await views.aclose()

    result = await rebuild(config, store_url=store)
    assert result.facts == len(customers) + len(orders)
    assert result.rows == {"facts": len(customers)}

    config_file = tmp_path / "sidecar.toml"
    config_file.write_text(
        f'[factbus]\ntransport = "{transport}"\nstore = "{store}"\ntopic = "shop"\n'
        'node = "s"\n\n[[sidecar.table]]\nname = "facts"\nfact = "Shop.Customer"\n'
        'columns = { email = "fields.email" }\n'
    )
    status, out, errors = await run_factbus(
        "sidecar",
        "rebuild",
        "--config",
        str(config_file),
        env={k: v for k, v in os.environ.items() if not k.startswith("FACTBUS_")},
    )
    assert status == 0, errors
    assert "factbus sidecar rebuild: replayed 7 facts into facts (3 rows)\n" in out
