"""``Bus.published``: a fact counts as published as soon as ``publish`` returned,
also while a pipeline step holds the store (on SQLite its refs wait in
``pipeline.pending_published``; a memory store records them at once) and once
the recent-published cache forgot it. Memory transport; the step is held open
by a handler that blocks until the test releases it (no timing)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

from factbus import Bus, Fact, FactRef

GATE = "Test.Gate"
GATE_REF = FactRef(GATE, Fact(GATE, {}).hash)
"""Never published: ``published`` leaves it out."""


async def test_published_answers_while_a_step_holds_the_store(tmp_path: Path) -> None:
    topic = f"published-{uuid.uuid4().hex[:8]}"
    url = f"memory://{topic}"
    # A cache of one: the customer is forgotten by it once the next fact is published.
    bus = Bus(url, f"sqlite:///{tmp_path / 'n.db'}", topic=topic, node="n", handled_cache=1)
    entered, release = asyncio.Event(), asyncio.Event()

    @bus.handler(GATE)
    async def gate(fact: Fact) -> None:
        entered.set()
        await release.wait()

    received: list[str] = []
    reader = Bus(url, "memory://", topic=topic, node="reader")
    reader.handler("*")(lambda fact: received.append(fact.hash))
    customer = Fact("Shop.Customer", {"email": "ada@example.com"})
    other = Fact("Shop.Customer", {"email": "bob@example.com"})
    order = Fact("Shop.Order", {"number": 1}, {"customer": customer})
    gate_fact = Fact(GATE, {"run": topic})
    async with reader, bus:
        await bus.publish(gate_fact)
        async with asyncio.timeout(30):
            await entered.wait()
        try:
            await bus.publish(customer)
            await bus.publish(other)
            assert await bus.store.published([customer.ref]) == set()  # not recorded yet
            assert set(bus.pipeline.pending_published) == {customer.ref, other.ref}
            # Publishing the order with its customer given as a Fact ships the order
            # alone: the customer is known published although neither cache nor store has it.
            await bus.publish(order)
            assert await bus.published([customer.ref, other.ref, order.ref, GATE_REF]) == {
                customer.ref,
                other.ref,
                order.ref,
            }
        finally:
            release.set()
        await bus.drain()
        await reader.drain()
        assert sorted(received) == sorted([gate_fact.hash, customer.hash, other.hash, order.hash])
        assert reader.stats.facts_received == 4  # 5 if the customer had travelled again
        assert await bus.store.published([customer.ref, other.ref, order.ref]) == {
            customer.ref,
            other.ref,
            order.ref,
        }
        assert await bus.published([customer.ref, order.ref]) == {customer.ref, order.ref}


async def test_a_confirmed_publish_returns_its_refs_when_recording_them_fails(
    tmp_path: Path,
) -> None:
    """The broker confirmed: ``publish`` returns the refs although the SQLite store
    refuses to record them (a trigger aborts every insert into its published
    table); the failure is counted, ``published`` answers from the waiting refs,
    and the next publish records them once the store accepts writes again."""
    topic = f"published-fail-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "node.db"
    bus = Bus(f"memory://{topic}", f"sqlite:///{path}", topic=topic, node="n", consume=False)
    customer = Fact("Shop.Customer", {"email": "ada@example.com"})
    order = Fact("Shop.Order", {"number": 1}, {"customer": customer})
    later = Fact("Shop.Customer", {"email": "bob@example.com"})
    async with bus:
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON factbus_published "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        assert await bus.publish(order) == [order.ref]
        assert bus.stats.publish_record_failures == 1
        assert await bus.store.published([customer.ref, order.ref]) == set()
        assert set(bus.pipeline.pending_published) == {customer.ref, order.ref}
        assert await bus.published([customer.ref, order.ref]) == {customer.ref, order.ref}
        with sqlite3.connect(path) as db:
            db.execute("DROP TRIGGER refuse")
        assert await bus.publish(later) == [later.ref]
        assert bus.stats.publish_record_failures == 1
        assert bus.pipeline.pending_published == []
        assert await bus.store.published([customer.ref, order.ref, later.ref]) == {
            customer.ref,
            order.ref,
            later.ref,
        }


async def test_close_does_not_raise_when_it_cannot_record_the_refs(tmp_path: Path) -> None:
    """Closing while the store refuses the waiting refs does not raise and closes
    transport and store anyway (the refs are forgotten; a second failure counted)."""
    topic = f"published-close-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "node.db"
    bus = Bus(f"memory://{topic}", f"sqlite:///{path}", topic=topic, node="n", consume=False)
    fact = Fact("Shop.Customer", {"email": "ada@example.com"})
    await bus.publish(fact)  # publish-only use: connects
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON factbus_published "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    await bus.publish(Fact("Shop.Customer", {"email": "bob@example.com"}))
    await bus.aclose()
    assert bus.stats.publish_record_failures == 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM factbus_published").fetchone()[0] == 1


async def test_a_memory_store_answers_for_more_refs_than_the_cache_holds() -> None:
    """On a memory store the bus keeps no recent-published cache in front of it
    (PROFILE.md §22): the store answers, for every ref ever shipped."""
    topic = f"published-{uuid.uuid4().hex[:8]}"
    url = f"memory://{topic}"
    received: list[str] = []
    reader = Bus(url, "memory://", topic=topic, node="reader")
    reader.handler("*")(lambda fact: received.append(fact.hash))
    bus = Bus(url, "memory://", topic=topic, node="n", consume=False, handled_cache=2)
    customer = Fact("Shop.Customer", {"email": "ada@example.com"})
    others = [Fact("Shop.Customer", {"email": f"c{i}@example.com"}) for i in range(5)]
    order = Fact("Shop.Order", {"number": 1}, {"customer": customer})
    async with reader, bus:
        await bus.publish(customer)
        await bus.publish(*others)
        await bus.publish(order)  # the customer, given as a Fact, is known published
        await reader.drain()
        assert await bus.published([customer.ref, order.ref, GATE_REF]) == {
            customer.ref,
            order.ref,
        }
    assert sorted(received) == sorted([customer.hash, *(o.hash for o in others), order.hash])
    assert reader.stats.facts_received == 7  # 8 if the customer had travelled again


async def test_a_memory_store_records_published_refs_at_once_while_a_step_holds_it() -> None:
    """On a memory store ``publish`` records what it shipped at once, without a
    transaction (docs/decisions.md, "Published refs on a memory store: recorded
    at once"): also while a pipeline step holds the store, nothing waits in
    ``pipeline.pending_published``, and the step's own transaction (its handled
    marks, applied at its commit) is not disturbed."""
    topic = f"published-{uuid.uuid4().hex[:8]}"
    url = f"memory://{topic}"
    bus = Bus(url, "memory://", topic=topic, node="n", handled_cache=1)
    entered, release = asyncio.Event(), asyncio.Event()

    @bus.handler(GATE)
    async def gate(fact: Fact) -> None:
        entered.set()
        await release.wait()

    customer = Fact("Shop.Customer", {"email": "ada@example.com"})
    order = Fact("Shop.Order", {"number": 1}, {"customer": customer})
    gate_fact = Fact(GATE, {"run": topic})
    async with bus:
        await bus.publish(gate_fact)
        async with asyncio.timeout(30):
            await entered.wait()
        try:
            assert await bus.publish(order) == [order.ref]
            assert bus.pipeline.pending_published == []
            assert await bus.store.published([customer.ref, order.ref, GATE_REF]) == {
                customer.ref,
                order.ref,
            }
            assert (await bus.store.counts())["handled"] == 0  # the step not committed
        finally:
            release.set()
        await bus.drain()
        assert (await bus.store.counts())["published"] == 3
        assert await bus.store.states([gate_fact.ref]) != {}
