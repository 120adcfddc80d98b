"""A store records the group (or fan-out node) that owns it on first use; another
group or node consuming with it is refused with an error naming both and the fix,
instead of silently skipping every fact the owner handled."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conftest import broker_url
from factbus import Bus, Fact, StoreOwnedError
from factbus.store.memory import MemoryStore
from factbus.testing.brokers import drop_schema, unique, with_options


def facts(n: int, tag: str) -> list[Fact]:
    return [Fact("Owned", {"i": i, "tag": tag}) for i in range(n)]


async def consume_all(bus: Bus, publish: list[Fact], url: str, topic: str) -> list[Fact]:
    seen: list[Fact] = []
    bus.handler("Owned")(seen.append)
    async with bus, Bus(url, "memory://", topic=topic, node="pub", consume=False) as pub:
        await pub.publish(*publish)
        await bus.drain(timeout=30)
    return seen


async def test_another_node_is_refused_on_a_sqlite_store(tmp_path: Path) -> None:
    url, topic = f"memory://{uuid.uuid4().hex[:8]}", "owned"
    store = f"sqlite:///{tmp_path / 'a.db'}"
    batch = facts(20, "sqlite")
    first = await consume_all(Bus(url, store, topic=topic, node="a"), batch, url, topic)
    assert len(first) == 20
    # The same node again: its own store, nothing refused.
    again = await consume_all(Bus(url, store, topic=topic, node="a"), facts(3, "x"), url, topic)
    assert len(again) == 3
    other = Bus(url, store, topic=topic, node="b")
    with pytest.raises(StoreOwnedError) as refused:
        await other.start()
    message = str(refused.value)
    assert "node 'a'" in message and "node 'b'" in message and "a.db" in message
    assert "store of its own" in message
    assert (refused.value.owner, refused.value.wanted) == ("node 'a'", "node 'b'")
    # Publishing only (no consuming) does not need to own the store.
    async with Bus(url, store, topic=topic, node="b", consume=False) as publisher:
        await publisher.publish(*facts(2, "p"))


async def test_another_group_is_refused_on_a_memory_store() -> None:
    url, topic = f"memory://{uuid.uuid4().hex[:8]}", "owned"
    store = MemoryStore()
    await consume_all(Bus(url, store, topic=topic, group="g1", node="w1"), [], url, topic)
    with pytest.raises(StoreOwnedError, match=r"group 'g1'.*group 'g2'"):
        await Bus(url, store, topic=topic, group="g2", node="w1").start()


@pytest.mark.broker("postgres")
async def test_groups_on_one_postgres_store() -> None:
    pg = broker_url("postgres")
    schema = unique("owner", "_")
    store = with_options(pg, schema=schema)
    url, topic = f"memory://{uuid.uuid4().hex[:8]}", "owned"
    batch = facts(50, "pg")
    try:
        first = await consume_all(
            Bus(url, store, topic=topic, group="billing", node="w1"), batch, url, topic
        )
        assert len(first) == 50
        # A second worker of the same group shares the store.
        second = await consume_all(
            Bus(url, store, topic=topic, group="billing", node="w2"), facts(5, "w2"), url, topic
        )
        assert len(second) == 5
        # Another group over the same facts: refused, not 0 of 50 handled in silence.
        with pytest.raises(StoreOwnedError) as refused:
            await Bus(url, store, topic=topic, group="audit", node="w3").start()
        message = str(refused.value)
        assert "group 'billing'" in message and "group 'audit'" in message
        assert schema in message and "schema" in message
    finally:
        await drop_schema(pg, schema)
