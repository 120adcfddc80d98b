"""A transport closed under a running Bus (the memory transport, a real adapter):
the consumer ends with :class:`FatalTransportError` (the transport error
contract, factbus/transport/base.py) and the event loop stays responsive.

Before the fix, ``next_batch`` on the closed subscription returned ``[]`` at
once, without awaiting anything, and ``Bus._consume`` spun on it and never gave
the loop back. The bus therefore runs in a thread of its own, so that this test
can tell a blocked loop (the thread never finishes) from a slow one.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from factbus import Bus, Fact
from factbus.errors import FatalTransportError

WAIT = 20.0
"""Seconds the test gives the bus's thread to finish (it needs well under one)."""


async def _close_under_a_running_bus() -> tuple[BaseException | None, int, int]:
    url = f"memory://closed-{uuid.uuid4().hex}"
    handled: list[Fact] = []
    bus = Bus(url, "memory://", node="r")

    @bus.handler("Closed.Test")
    async def record(fact: Fact) -> None:
        handled.append(fact)

    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    async with Bus(url, "memory://", node="p", consume=False) as publisher:
        await bus.start()
        await publisher.publish(Fact("Closed.Test", {"n": 1}))
        await bus.drain(timeout=10)
        assert len(handled) == 1
        consumer = bus.consumer
        assert consumer is not None
        await bus.transport.aclose()  # under the running bus
        before = ticks
        done, _ = await asyncio.wait([consumer], timeout=5)
        after_close = ticks - before
        await asyncio.sleep(0.1)  # the loop still runs other tasks
        after_end = ticks - before
        ended = consumer.exception() if done else None
        await bus.aclose()
    beat.cancel()
    assert bus.failure is ended
    return ended, after_close, after_end


def test_a_transport_closed_under_a_running_bus_ends_its_consumer_with_a_fatal_error() -> None:
    result: list[tuple[BaseException | None, int, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_close_under_a_running_bus()))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    thread = threading.Thread(target=run, name="closed-transport-bus", daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), (
        f"the bus's event loop is still busy {WAIT} s after its transport closed "
        "(the consumer spins on a closed subscription)"
    )
    if errors:
        raise errors[0]
    ended, after_close, after_end = result[0]
    assert isinstance(ended, FatalTransportError), ended
    assert "closed" in str(ended)
    assert after_end > after_close >= 0  # the heartbeat kept running


def test_next_batch_on_a_closed_memory_subscription_raises_without_waiting() -> None:
    async def scenario() -> None:
        from factbus.transport.memory import MemoryTransport

        transport = MemoryTransport(f"memory://closed-{uuid.uuid4().hex}")
        await transport.connect()
        subscription = await transport.subscribe("t", "g")
        await transport.aclose()
        with pytest.raises(FatalTransportError, match="closed"):
            await asyncio.wait_for(subscription.next_batch(10, timeout=None), 5)

    asyncio.run(scenario())
