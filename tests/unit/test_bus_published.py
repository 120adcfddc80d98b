"""``Bus.published``: a fact counts as published as soon as ``publish`` returned,
also while a pipeline step holds the store (its refs wait in
``pipeline.pending_published``) and once the recent-published cache forgot it.
Memory transport and store; the step is held open by a handler that blocks
until the test releases it (no timing)."""

from __future__ import annotations

import asyncio
import uuid

from factbus import Bus, Fact, FactRef

GATE = "Test.Gate"
GATE_REF = FactRef(GATE, Fact(GATE, {}).hash)
"""Never published: ``published`` leaves it out."""


async def test_published_answers_while_a_step_holds_the_store() -> None:
    topic = f"published-{uuid.uuid4().hex[:8]}"
    url = f"memory://{topic}"
    # A cache of one: the customer is forgotten by it once the next fact is published.
    bus = Bus(url, "memory://", topic=topic, node="n", handled_cache=1)
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
        await bus.publish(customer)
        await bus.publish(other)
        assert await bus.store.published([customer.ref]) == set()  # not recorded yet
        # Publishing the order with its customer given as a Fact ships the order
        # alone: the customer is known published although neither cache nor store has it.
        await bus.publish(order)
        assert await bus.published([customer.ref, other.ref, order.ref, GATE_REF]) == {
            customer.ref,
            other.ref,
            order.ref,
        }
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
