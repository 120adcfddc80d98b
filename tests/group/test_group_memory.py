"""Group mode in one process: several buses on one memory namespace and one group
share a queue, and one PostgreSQL store.

The memory transport cannot span processes, so this is the in-process variant
of ``test_group_brokers``: four buses compete for one queue; one of them
"crashes" mid-stream (its consumer task is cancelled in the middle of a step,
its unacknowledged deliveries go back to the queue) and a fresh bus takes its
place. The effect table proves once-each, in causal order.
``FACTBUS_GROUP_MEMORY_FACTS`` sets the size (default 5,000: four buses on one
event loop are no faster than one).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from group_support import (
    EffectTable,
    env_int,
    record_effect,
)

from factbus import Bus, Fact
from factbus.errors import ConfigError
from factbus.testing.brokers import broker_url, drop_schema, unique, with_options
from factbus.testing.scenario import random_dag, shuffled_with_duplicates
from factbus.transport.memory import MemoryTransport

FACTS = env_int("MEMORY_FACTS", 5_000)


@pytest.fixture
async def group_store() -> AsyncIterator[tuple[str, str, EffectTable]]:
    """(PostgreSQL URL, store URL on a fresh schema, its effect table)."""
    pg = broker_url("postgres")
    schema = unique("fbmem", "_")
    table = EffectTable(schema)
    await table.create(pg)
    try:
        yield pg, with_options(pg, schema=schema, pool_max=3), table
    finally:
        await drop_schema(pg, schema)


def _worker(namespace: str, store: str, table: EffectTable, name: str, types: set[str]) -> Bus:
    bus = Bus(namespace, store, topic="facts", group="workers", node=name, batch_size=128)

    async def effect(fact: Fact, conn: asyncpg.Connection) -> None:
        await record_effect(conn, table, name, fact)

    for fact_type in types:
        bus.handler(fact_type, transactional=True)(effect)
    return bus


async def _crash(bus: Bus) -> None:
    """Kill a bus as abruptly as one process allows: cancel its consumer wherever it
    is (mid-transaction included), then drop its subscription and connections."""
    consumer = bus.consumer
    assert consumer is not None
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    await bus.aclose()


async def test_four_buses_in_one_group_handle_each_fact_once_in_order(
    group_store: tuple[str, str, EffectTable],
) -> None:
    pg, store, table = group_store
    namespace = f"memory://group-{uuid.uuid4().hex[:8]}"
    dag = random_dag(FACTS, seed=5)
    order = shuffled_with_duplicates(dag, duplicates=0.3, seed=5)
    types = {fact.type for fact in dag}
    workers = [_worker(namespace, store, table, f"w{i}", types) for i in range(4)]
    publisher = Bus(namespace, "memory://", topic="facts", node="publisher", consume=False)
    conn = await asyncpg.connect(pg)
    try:
        for bus in workers:
            await bus.start()
        await publisher.start()
        for start in range(0, len(order), 250):
            await publisher.publish(*order[start : start + 250], ancestors=False)
        crashed = False
        deadline = time.monotonic() + 240
        while (done := await table.count(conn)) < FACTS:
            assert time.monotonic() < deadline, f"{done}/{FACTS} handled"
            if not crashed and done >= FACTS // 4:
                await _crash(workers[1])
                workers.append(_worker(namespace, store, table, "w4", types))
                await workers[-1].start()
                crashed = True
            await asyncio.sleep(0.1)
        for bus in workers:
            await bus.drain(timeout=30)
        verdict = await table.verdict(pg, dag)
        assert verdict.perfect, verdict
        assert crashed
        assert (await workers[0].store.counts())["parked"] == 0
        assert sum(1 for n in verdict.by_worker.values() if n > 0) >= 3, verdict.by_worker
    finally:
        await publisher.aclose()
        for bus in workers:
            await bus.aclose()
        await conn.close()
        MemoryTransport.reset(namespace.removeprefix("memory://"))


async def test_group_buses_share_handled_marks_and_claims(
    group_store: tuple[str, str, EffectTable],
) -> None:
    """Two buses of one group each receive part of a chain, newest link first; no
    link is handled before the one before it, whichever bus that one went to."""
    pg, store, table = group_store
    namespace = f"memory://pair-{uuid.uuid4().hex[:8]}"
    chain: list[Fact] = []
    for i in range(200):
        chain.append(Fact("Group.Link", {"i": i}, {"prior": chain[-1]} if chain else {}))
    workers = [_worker(namespace, store, table, f"p{i}", {"Group.Link"}) for i in range(2)]
    publisher = Bus(namespace, "memory://", topic="facts", node="publisher", consume=False)
    try:
        for bus in workers:
            await bus.start()
        # Newest first: almost everything parks before its predecessor arrives.
        for fact in reversed(chain):
            await publisher.publish(fact, ancestors=False)
        deadline = time.monotonic() + 60
        conn = await asyncpg.connect(pg)
        try:
            while await table.count(conn) < len(chain):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        verdict = await table.verdict(pg, chain)
        assert verdict.perfect, verdict
        # Both received part of the chain (the bus that gets the root then hands
        # on what the other parked: the wait lists are shared).
        assert all(bus.stats.messages > 0 for bus in workers)
    finally:
        await publisher.aclose()
        for bus in workers:
            await bus.aclose()
        MemoryTransport.reset(namespace.removeprefix("memory://"))


async def test_a_fact_whose_predecessor_was_dead_lettered_stays_parked(
    group_store: tuple[str, str, EffectTable],
) -> None:
    """Q fails (dead-lettered) in the step where X, which needs P and Q, is parked
    waiting for P only as far as that step knows; P arrives later. The store
    records X as waiting on every predecessor, so X is never handled."""
    _, store, _ = group_store
    namespace = f"memory://dead-{uuid.uuid4().hex[:8]}"
    p, q = Fact("Group.P", {"x": 1}), Fact("Group.Q", {"x": 2})
    x = Fact("Group.X", {}, {"p": p, "q": q})
    handled: list[str] = []
    bus = Bus(namespace, store, topic="facts", group="g", node="solo", retry_attempts=1)

    @bus.handler("Group.Q")
    def fail(fact: Fact) -> None:
        raise RuntimeError("Q's handler always fails")

    for fact_type in ("Group.P", "Group.X"):
        bus.handler(fact_type)(lambda fact: handled.append(fact.type))
    publisher = Bus(namespace, "memory://", topic="facts", node="publisher", consume=False)
    try:
        async with bus, publisher:
            await publisher.publish(q, x, ancestors=False)  # one step: Q dead, X parked
            await bus.drain(timeout=10)
            await publisher.publish(p, ancestors=False)
            await bus.drain(timeout=10)
            assert handled == ["Group.P"]
            assert [parked.fact for parked in await bus.store.parked()] == [x]
    finally:
        MemoryTransport.reset(namespace.removeprefix("memory://"))


def test_more_than_one_worker_needs_a_group_and_a_shared_store() -> None:
    from factbus.commands.worker import check_group_mode

    fan_out = Bus("memory://x", "memory://", node="solo")
    check_group_mode(fan_out, 1)
    with pytest.raises(ConfigError, match="group mode"):
        check_group_mode(fan_out, 2)
    private = Bus("memory://x", "memory://", node="solo", group="g")
    with pytest.raises(ConfigError, match="store the workers share"):
        check_group_mode(private, 2)
    shared = Bus("memory://x", "postgresql://u:p@localhost/db", node="n", group="g")
    check_group_mode(shared, 4)
