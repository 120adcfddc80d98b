"""The pipeline's promise on the memory transport: every fact handled once, never
before its predecessors, nodes converge; bad input and failing handlers are
dead-lettered without stopping the stream; parked facts survive a restart."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factbus import Bus, Fact, FactRef
from factbus.envelope import encode
from factbus.testing.scenario import CausalChecker, random_dag, shuffled_with_duplicates
from factbus.transport import Message
from factbus.transport.memory import MemoryTransport


def ns() -> str:
    return f"memory://{uuid.uuid4().hex[:8]}"


def chain(n: int, kind: str = "C") -> list[Fact]:
    facts: list[Fact] = []
    for i in range(n):
        facts.append(Fact(kind, {"i": i}, {"prior": facts[-1]} if facts else {}))
    return facts


def watch(bus: Bus, checker: CausalChecker, name: str, types: set[str]) -> None:
    for fact_type in types:
        bus.handler(fact_type)(lambda fact, _n=name: checker.record(_n, fact))


async def deliver(url: str, order: list[Fact], topic: str = "facts", per_call: int = 37) -> None:
    """Publish each fact in its own envelope, exactly in ``order``."""
    async with Bus(url, "memory://", topic=topic, node="publisher", consume=False) as publisher:
        for start in range(0, len(order), per_call):
            await publisher.publish(*order[start : start + per_call], ancestors=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 120),
    seed=st.integers(0, 10_000),
    duplicates=st.floats(0, 1.5),
    shape=st.sampled_from(["independent", "chains", "fan-in", "mixed"]),
    batch=st.sampled_from([1, 7, 512]),
)
def test_any_order_any_duplicates_converges(
    size: int, seed: int, duplicates: float, shape: Any, batch: int, tmp_path_factory: Any
) -> None:
    dag = random_dag(size, seed=seed, shape=shape)
    order = shuffled_with_duplicates(dag, duplicates=duplicates, seed=seed)
    checker = CausalChecker.of(dag)
    store_dir = tmp_path_factory.mktemp("stores")

    async def scenario() -> None:
        url = ns()
        nodes = []
        for i, store in enumerate(["memory://", f"sqlite:///{store_dir}/n1.db", "memory://"]):
            bus = Bus(url, store, node=f"n{i}", batch_size=batch)
            watch(bus, checker, f"n{i}", {f.type for f in dag})
            nodes.append(bus)
        for bus in nodes:
            await bus.start()
        await deliver(url, order)
        for bus in nodes:
            await bus.drain(timeout=30)
            await bus.aclose()

    asyncio.run(scenario())
    report = checker.report(["n0", "n1", "n2"])
    assert (report.lost, report.duplicated, report.out_of_order) == (0, 0, 0)
    assert report.converged


async def test_ancestors_travel_with_the_fact_once() -> None:
    url = ns()
    a, b, c = chain(3)
    seen: list[str] = []
    receiver = Bus(url, "memory://", node="r")
    receiver.handler("C")(lambda f: seen.append(str(f.fields["i"])))
    async with receiver, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(c)  # ships a and b too
        await publisher.publish(c)  # ships c alone
        await receiver.drain()
    assert seen == ["0", "1", "2"]
    assert receiver.stats.messages == 2
    assert receiver.stats.facts_received == 4


async def test_publish_without_ancestors_parks_until_they_come() -> None:
    url = ns()
    a, b, c = chain(3)
    seen: list[int] = []
    receiver = Bus(url, "memory://", node="r")
    receiver.handler("C")(lambda f: seen.append(f.fields["i"]))
    async with receiver, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(c, ancestors=False)
        await receiver.drain()
        assert seen == [] and receiver.stats.waiting == 1
        parked = await receiver.store.parked()
        assert [p.missing for p in parked] == [{b.ref}]
        await publisher.publish(b, ancestors=False)
        await receiver.drain()
        assert seen == [] and receiver.stats.waiting == 2
        await publisher.publish(a, ancestors=False)
        await receiver.drain()
    assert seen == [0, 1, 2]
    assert receiver.stats.waiting == 0 and receiver.stats.released == 2


async def test_parked_facts_survive_a_restart(tmp_path: Path) -> None:
    url, store = ns(), f"sqlite:///{tmp_path}/node.db"
    a, b, c = chain(3)
    seen: list[int] = []

    def node() -> Bus:
        bus = Bus(url, store, node="r")
        bus.handler("C")(lambda f: seen.append(f.fields["i"]))
        return bus

    async with Bus(url, "memory://", node="p", consume=False) as publisher:
        async with node() as first:
            await publisher.publish(c, b, ancestors=False)
            await first.drain()
        assert seen == []
        async with node() as second:
            assert second.stats.waiting == 2
            await publisher.publish(a, ancestors=False)
            await second.drain()
    assert seen == [0, 1, 2]


async def test_bad_envelopes_are_dead_lettered_and_the_stream_goes_on() -> None:
    url = ns()
    good = chain(3)
    seen: list[int] = []
    bus = Bus(url, "memory://", node="r")
    bus.handler("C")(lambda f: seen.append(f.fields["i"]))
    tampered = encode([good[0]]).replace(b'"i":0', b'"i":7')
    async with bus:
        transport = MemoryTransport(url)
        await transport.publish(
            "facts",
            [
                Message(b"{oops", "bad-1"),
                Message(encode([good[0]]), "g0"),
                Message(b'{"v": 9, "facts": []}', "bad-2"),
                Message(tampered, "bad-3"),
                Message(encode(good[1:]), "g1"),
            ],
        )
        await bus.drain()
        letters = await bus.transport.read_dead_letters("facts", 10)
    assert seen == [0, 1, 2]
    assert [letter.reason.split(":")[0] for letter in letters] == [
        "malformed",
        "unknown-version",
        "hash-mismatch",
    ]
    assert letters[0].body == b"{oops"
    assert bus.stats.rejected == 3


async def test_failing_handler_dead_letters_the_fact_and_parks_its_successors() -> None:
    url = ns()
    a, b, c = chain(3)
    attempts: list[int] = []
    handled: list[int] = []
    bus = Bus(url, "memory://", node="r", retry_attempts=3, retry_backoff=0.001)

    @bus.handler("C")
    async def handle(fact: Fact) -> None:
        if fact.fields["i"] == 1:
            attempts.append(1)
            raise RuntimeError("downstream is down")
        handled.append(fact.fields["i"])

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(c)
        await bus.drain()
        letters = await bus.transport.read_dead_letters("facts", 10)
        parked = await bus.store.parked()
    assert handled == [0]
    assert len(attempts) == 3
    assert len(letters) == 1 and "downstream is down" in letters[0].reason
    assert "failed 3x" in letters[0].reason
    assert [p.fact.ref for p in parked] == [c.ref]
    assert parked[0].missing == {b.ref}


async def test_a_replayed_fact_is_retried_and_releases_successors() -> None:
    url = ns()
    a, b, c = chain(3)
    broken = True
    handled: list[int] = []
    bus = Bus(url, "memory://", node="r", retry_attempts=1)

    @bus.handler("C")
    def handle(fact: Fact) -> None:
        if broken and fact.fields["i"] == 1:
            raise RuntimeError("bug")
        handled.append(fact.fields["i"])

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(c)
        await bus.drain()
        broken = False
        await publisher.publish(b, ancestors=False)
        await bus.drain()
    assert handled == [0, 1, 2]


async def test_transactional_handler_commits_with_the_handled_mark(tmp_path: Path) -> None:
    url, path = ns(), tmp_path / "node.db"
    facts = chain(5)
    bus = Bus(url, f"sqlite:///{path}", node="r", retry_attempts=2, retry_backoff=0.001)
    failures = {3: 1}  # fact 3 fails once, after writing: its row must be rolled back

    @bus.handler("C", transactional=True)
    def project(fact: Fact, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS effects (i INTEGER)")
        db.execute("INSERT INTO effects VALUES (?)", (fact.fields["i"],))
        if failures.get(fact.fields["i"], 0) > 0:
            failures[fact.fields["i"]] -= 1
            raise RuntimeError("flaky")

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(facts[-1])
        await publisher.publish(*facts, ancestors=False)
        await bus.drain()
    rows = sqlite3.connect(path).execute("SELECT i FROM effects ORDER BY rowid").fetchall()
    assert rows == [(0,), (1,), (2,), (3,), (4,)]


async def test_handlers_see_facts_of_several_types_in_causal_order() -> None:
    url = ns()
    shop = Fact("Shop", {"name": "s"})
    order = Fact("Order", {"n": 1}, {"shop": shop})
    line = Fact("Line", {"sku": "x"}, {"order": order})
    paid = Fact("Paid", {}, {"order": order, "lines": [line]})
    log: list[str] = []
    bus = Bus(url, "memory://", node="r")
    for t in ("Shop", "Order", "Line", "Paid"):
        bus.handler(t)(lambda f: log.append(f.type))
    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        for fact in random.Random(1).sample([shop, order, line, paid], 4):
            await publisher.publish(fact, ancestors=False)
        await bus.drain()
    assert log == ["Shop", "Order", "Line", "Paid"]


async def test_async_handler_timeout() -> None:
    """An async handler that outlives handler_timeout fails with TimeoutError."""
    url = ns()
    fact = Fact("Slow", {})
    bus = Bus(url, "memory://", node="r", handler_timeout=0.05, retry_attempts=1)

    @bus.handler("Slow")
    async def slow(f: Fact) -> None:
        await asyncio.sleep(1)

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(fact)
        await bus.drain()
        letters = await bus.transport.read_dead_letters("facts", 10)
    assert "TimeoutError" in letters[0].reason


def test_group_and_fanout_settings() -> None:
    bus = Bus("memory://x", "memory://", node="n1")
    assert bus.settings.subscription_group == "n1"
    grouped = Bus("memory://x", "memory://", node="n1", group="workers")
    assert grouped.settings.subscription_group == "workers"


def test_repr_hides_credentials() -> None:
    bus = Bus("memory://x", "memory://", node="n1")
    bus.settings = bus.settings.__class__(transport="amqp://u:secret@host/", node="n1")
    assert "secret" not in repr(bus)


def test_fact_ref_str() -> None:
    ref = FactRef("T", "a" * 88)
    assert str(ref) == "T#aaaaaaaaaaaa"


async def test_a_fact_parked_beside_a_failing_predecessor_waits_for_it() -> None:
    """X needs P and Q; Q is ready in the same step as X is parked, and fails.
    When P arrives, X must still wait for Q (regression: it was released)."""
    url = ns()
    p, q = Fact("P", {"n": 1}), Fact("Q", {"n": 2})
    x = Fact("X", {}, {"p": p, "q": q})
    handled: list[str] = []
    bus = Bus(url, "sqlite:///:memory:", node="r", retry_attempts=1)
    bus.handler("P")(lambda f: handled.append("P"))
    bus.handler("X")(lambda f: handled.append("X"))

    @bus.handler("Q")
    def fail(f: Fact) -> None:
        raise RuntimeError("Q is broken")

    async with bus, Bus(url, "memory://", node="pub", consume=False) as publisher:
        await publisher.publish(q, x, ancestors=False)  # one step: Q ready (fails), X parked
        await bus.drain()
        await publisher.publish(p, ancestors=False)
        await bus.drain()
        parked = await bus.store.parked()
    assert handled == ["P"]
    assert [pf.fact.ref for pf in parked] == [x.ref]
    assert parked[0].missing == {q.ref}


async def test_publish_only_bus_closes_what_publish_opened(tmp_path: Path) -> None:
    bus = Bus(ns(), f"sqlite:///{tmp_path}/p.db", node="p", consume=False)
    await bus.publish(Fact("T", {}))
    await bus.aclose()
    with pytest.raises(RuntimeError, match="not open"):
        await bus.store.counts()


async def test_catch_all_handler_runs_for_every_fact_after_typed_ones(tmp_path: Path) -> None:
    url, path = ns(), tmp_path / "node.db"
    a = Fact("A", {"i": 1})
    b = Fact("B", {"i": 2}, {"a": a})
    seen: list[str] = []
    bus = Bus(url, f"sqlite:///{path}", node="r")

    @bus.handler("*", transactional=True)
    def everything(fact: Fact, db: sqlite3.Connection) -> None:
        seen.append(f"*{fact.type}")
        db.execute("CREATE TABLE IF NOT EXISTS archived (type TEXT)")
        db.execute("INSERT INTO archived VALUES (?)", (fact.type,))

    @bus.handler("B")
    def typed(fact: Fact) -> None:
        seen.append(fact.type)

    async with bus, Bus(url, "memory://", node="p", consume=False) as publisher:
        await publisher.publish(b)
        await publisher.publish(b, a, ancestors=False)  # duplicates: handled once
        await bus.drain()
    assert seen == ["*A", "B", "*B"]
    rows = sqlite3.connect(path).execute("SELECT type FROM archived ORDER BY rowid").fetchall()
    assert rows == [("A",), ("B",)]
    assert bus.dispatcher.handlers_for("B")[-1].func is everything
