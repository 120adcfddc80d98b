"""Store transactions run before-commit hooks inside the transaction and
after-commit hooks only once it committed; a failing before-commit hook rolls
everything back. ``current_transaction()`` gives handlers the transaction."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from factbus import Bus, Fact
from factbus.dispatcher import current_transaction
from factbus.store import Store, StoreBatch, open_store
from factbus.testing.brokers import broker_url, drop_schema, unique


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.broker("postgres"))]
)
async def store(request: Any, tmp_path: Path) -> Any:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hooks.db'}"
    else:
        base = broker_url("postgres")
        url = f"{base}?schema={unique('fbhooks', '_')}"
    opened = open_store(url)
    await opened.open()
    yield opened
    if request.param == "postgres":
        await drop_schema(base, url.rsplit("schema=", 1)[1])
    await opened.aclose()


async def test_hooks_run_around_the_commit(store: Store) -> None:
    a, b = Fact("Hook.A", {"i": 1}), Fact("Hook.B", {"i": 2})
    events: list[str] = []
    async with store.transaction() as tx:

        async def before() -> None:
            events.append("before")
            await tx.record(StoreBatch(handled=[b]))  # writes commit with the transaction

        tx.before_commit(before)
        tx.after_commit(lambda: events.append("after"))
        await tx.record(StoreBatch(handled=[a]))
        assert events == []
    assert events == ["before", "after"]
    assert set(await store.states([a.ref, b.ref])) == {a.ref, b.ref}


async def test_a_failing_before_commit_hook_rolls_back(store: Store) -> None:
    a = Fact("Hook.A", {"i": 3})
    events: list[str] = []

    async def fail() -> None:
        raise RuntimeError("view write failed")

    with pytest.raises(RuntimeError, match="view write failed"):
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=[a]))
            tx.before_commit(fail)
            tx.after_commit(lambda: events.append("after"))
    assert events == []
    assert await store.states([a.ref]) == {}


async def test_current_transaction_inside_and_outside_handlers(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="only available inside a handler"):
        current_transaction()
    url = f"memory://{uuid.uuid4().hex[:8]}"
    bus = Bus(url, f"sqlite:///{tmp_path / 'n.db'}", node="n")
    committed: list[str] = []

    @bus.handler("Hook.A")
    def handle(fact: Fact) -> None:
        tx = current_transaction()
        assert isinstance(tx.connection, sqlite3.Connection)
        tx.after_commit(lambda: committed.append(fact.hash))

    async with bus, Bus(url, "memory://", node="p", consume=False) as pub:
        fact = Fact("Hook.A", {"i": 4})
        await pub.publish(fact)
        await bus.drain()
    assert committed == [fact.hash]
