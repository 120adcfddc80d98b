"""Views converge: the same fact set, delivered to three sidecars in different
orders with duplicates, leaves byte-identical tables equal to a direct
computation from the set, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from views_support import (
    KINDS,
    TABLES,
    Database,
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
from factbus.sidecar.views import Change
from factbus.testing.scenario import shuffled_with_duplicates


async def settled(bus: Bus, timeout: float = 30.0) -> None:
    """Drained, and nothing parked in the store (a shared PostgreSQL store may
    release its last parked facts in a follow-up or a sweep after a drain)."""
    async with asyncio.timeout(timeout):
        while True:
            await bus.drain(timeout=timeout)
            if (await bus.store.counts())["parked"] == 0:
                return
            await asyncio.sleep(0.1)


async def converge(kind: str, tmp: Path, facts: list[Fact], seed: int, batch: int) -> None:
    config = shop_config()
    expected = expected_rows(facts)
    async with databases(kind, 3, tmp) as dbs:
        dumps: list[dict[str, bytes]] = []
        for i, db in enumerate(dbs):
            transport = f"memory://{uuid.uuid4().hex[:8]}"
            order = shuffled_with_duplicates(facts, duplicates=0.5, seed=seed * 3 + i)
            if i == 0:
                order = list(reversed(order))
            async with sidecar(transport, db, config, f"s{i}", batch_size=batch) as (bus, views):
                await deliver(transport, order, per_call=[1, 5, 50][i])
                await settled(bus)
                for table in TABLES:
                    assert await all_rows(views, table) == expected[table], (kind, i, table)
            dumps.append({table: await dump(db, table) for table in TABLES})
        assert dumps[0] == dumps[1] == dumps[2]


@pytest.mark.parametrize("kind", KINDS)
def test_views_converge_whatever_the_order(kind: str, tmp_path_factory: Any) -> None:
    examples = 12 if kind == "sqlite" else 6

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        seed=st.integers(0, 100_000),
        orders=st.integers(1, 6),
        edits=st.integers(0, 5),
        cancels=st.integers(0, 4),
        batch=st.sampled_from([1, 3, 512]),
    )
    def check(seed: int, orders: int, edits: int, cancels: int, batch: int) -> None:
        facts = shop_facts(seed, orders=orders, edits=edits, cancels=cancels)
        asyncio.run(converge(kind, tmp_path_factory.mktemp("views"), facts, seed, batch))

    check()


async def test_changes_are_announced_after_commit(tmp_path: Path) -> None:
    facts = shop_facts(7, orders=1, edits=0, cancels=0)
    order = next(f for f in facts if f.type == "Shop.Order")
    first = Fact("Shop.Order.Status", {"value": "paid"}, {"order": order, "prior": []})
    second = Fact("Shop.Order.Status", {"value": "shipped"}, {"order": order, "prior": []})
    merge = Fact("Shop.Order.Status", {"value": "done"}, {"order": order, "prior": [first, second]})
    cancel = Fact("Shop.Order.Cancelled", {}, {"order": order})
    revoke = Fact("Shop.Order.Cancelled.Revoked", {}, {"cancelled": cancel})
    transport = f"memory://{uuid.uuid4().hex[:8]}"
    async with databases("sqlite", 1, tmp_path) as (db,):
        assert isinstance(db, Database)
        async with sidecar(transport, db, shop_config(), "s") as (bus, views):
            seen: list[tuple[str, str, Any]] = []

            def listener(change: Change) -> None:
                # After commit: a fresh connection already sees the row as announced.
                seen.append((change.table, change.op, change.row and change.row.get("status")))

            unsubscribe = views.listen(listener)
            await deliver(transport, facts, 50)
            await bus.drain()
            assert ("orders", "added", None) in seen
            seen.clear()
            for fact, expected in [
                (first, [("orders", "changed", "paid")]),
                (
                    second,
                    [
                        (
                            "orders",
                            "changed",
                            max([first, second], key=lambda f: f.hash).fields["value"],
                        )
                    ],
                ),
                (merge, [("orders", "changed", "done")]),
                (cancel, [("orders", "removed", None)]),
                (revoke, [("orders", "added", "done")]),
            ]:
                await deliver(transport, [fact], 1)
                await bus.drain()
                assert seen == expected, fact
                seen.clear()
            row = await views.row("orders", order.hash)
            assert row is not None and row["status_candidates"] == ["done"]
            unsubscribe()
            await deliver(transport, [Fact("Shop.Order.Cancelled", {"n": 2}, {"order": order})], 1)
            await bus.drain()
            assert seen == []
            assert await views.row("orders", order.hash) is None
