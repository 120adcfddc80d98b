"""No broker call happens while a store transaction is open.

A store transaction holds SQLite's write lock or PostgreSQL claims; a broker call
inside one (a dead letter, an ack) would hold them for up to the broker's timeout.
The bus here runs over a transport wrapper that fails the test when any of its
calls, or any ack/nack of a delivery it handed out, happens while the store
wrapper has a transaction open. Handlers fail for some facts, so the step
dead-letters; envelopes are malformed for others, so the step rejects.
Real parts throughout: the wrappers only observe (memory and SQLite; RabbitMQ
and PostgreSQL).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import broker_url
from factbus import Bus, Fact
from factbus.envelope import decode, encode
from factbus.errors import EnvelopeError
from factbus.testing.brokers import drop_schema, unique, with_options
from factbus.transport import Message, open_transport


class Guard:
    """Whether a store transaction is open, and every broker call seen during one."""

    def __init__(self) -> None:
        self.open = 0
        self.transactions = 0
        self.calls: list[str] = []
        self.violations: list[str] = []

    def call(self, name: str) -> None:
        self.calls.append(name)
        if self.open:
            self.violations.append(name)


class GuardedStore:
    """Delegates to a real store; counts its open transactions."""

    def __init__(self, store: Any, guard: Guard) -> None:
        self._store = store
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._store.transaction() as tx:
            self._guard.open += 1
            self._guard.transactions += 1
            try:
                yield tx
            finally:
                self._guard.open -= 1


class GuardedDelivery:
    def __init__(self, delivery: Any, guard: Guard) -> None:
        self._delivery = delivery
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._delivery, name)

    async def ack(self) -> None:
        self._guard.call("ack")
        await self._delivery.ack()

    async def nack(self, requeue: bool = True) -> None:
        self._guard.call("nack")
        await self._delivery.nack(requeue)


class GuardedSubscription:
    def __init__(self, subscription: Any, guard: Guard) -> None:
        self._subscription = subscription
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._subscription, name)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for delivery in self._subscription:
            yield GuardedDelivery(delivery, self._guard)

    async def next_batch(self, max_messages: int, timeout: float | None = None) -> list[Any]:
        self._guard.call("next_batch")
        batch = await self._subscription.next_batch(max_messages, timeout)
        return [GuardedDelivery(d, self._guard) for d in batch]


class GuardedTransport:
    """Delegates to a real transport; every coroutine method is a broker call."""

    def __init__(self, transport: Any, guard: Guard) -> None:
        self._transport = transport
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._transport, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        return self._wrap(name, attribute)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            self._guard.call(name)
            result = await method(*args, **kwargs)
            if name in ("subscribe", "subscribe_log"):
                return GuardedSubscription(result, self._guard)
            return result

        return guarded if inspect.iscoroutinefunction(method) else method

    async def __aenter__(self) -> GuardedTransport:
        await self._transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._transport.aclose()


def chain(n: int, tag: str) -> list[Fact]:
    facts: list[Fact] = []
    for i in range(n):
        facts.append(Fact("Guarded", {"i": i, "tag": tag}, {"prior": facts[-1]} if facts else {}))
    return facts


async def exercise(transport_url: str, store: Any, topic: str) -> Guard:
    guard = Guard()
    bus = Bus(
        GuardedTransport(open_transport(transport_url), guard),  # type: ignore[arg-type]
        GuardedStore(store, guard),  # type: ignore[arg-type]
        topic=topic,
        node="guarded",
        retry_attempts=1,
    )
    roots = [chain(1, f"r{k}")[0] for k in range(30)]
    failing = {r.ref for r in roots[::3]}

    @bus.handler("Guarded")
    async def handle(fact: Fact) -> None:
        if fact.ref in failing:
            raise RuntimeError("refused on purpose")

    async with bus, Bus(transport_url, "memory://", topic=topic, node="p", consume=False) as pub:
        # A chain behind a failing root: parked, never dead-lettered itself.
        tail = [Fact("Guarded", {"after": 0}, {"prior": roots[0]})]
        await pub.publish(*roots, *tail, ancestors=False)
        await pub.transport.publish(topic, [Message(b"not an envelope", {})])
        await pub.transport.publish(topic, [Message(encode(roots[1:2]), {})])
        await bus.drain(timeout=60)
        letters = await bus.transport.read_dead_letters(topic, 100)
    dead = {ref for letter in letters for ref in _refs(letter.body)}
    assert dead == failing, "every failing fact dead-lettered, nothing else"
    assert [letter.body for letter in letters if not _refs(letter.body)] == [b"not an envelope"]
    return guard


def _refs(body: bytes) -> set[Any]:
    try:
        return {f.ref for f in decode(body)}
    except EnvelopeError:
        return set()


def check(guard: Guard) -> None:
    assert guard.transactions > 0
    assert "dead_letter" in guard.calls and "ack" in guard.calls
    assert guard.violations == [], f"broker calls inside a store transaction: {guard.violations}"


async def test_memory_and_sqlite(tmp_path: Path) -> None:
    from factbus.store.sqlite import SqliteStore

    topic = unique("guard")
    store = SqliteStore(f"sqlite:///{tmp_path / 'node.db'}")
    check(await exercise(f"memory://{topic}", store, topic))


@pytest.mark.broker("amqp")
async def test_rabbitmq_and_postgres() -> None:
    from factbus_postgres import PostgresStore

    amqp = broker_url("amqp")
    pg = broker_url("postgres")
    schema = unique("guard", "_")
    topic = unique("guard")
    store = PostgresStore(with_options(pg, schema=schema))
    try:
        check(await exercise(amqp, store, topic))
    finally:
        await drop_schema(pg, schema)
