"""The buffered subscription every adapter builds on (factbus/transport/buffered.py),
on its own, and the check that every shipped adapter does build on it."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from factbus.errors import FatalTransportError, TransportError
from factbus.transport.buffered import BufferedSubscription, SettleOnce


class Numbers(BufferedSubscription[int]):
    async def aclose(self) -> None:
        self._close_buffer()


async def test_next_batch_hands_out_what_is_buffered_without_waiting_for_more() -> None:
    sub = Numbers()
    sub._deliver([1, 2, 3, 4, 5])
    assert await sub.next_batch(2) == [1, 2]
    assert await sub.next_batch(10) == [3, 4, 5]
    assert await sub.next_batch(10, timeout=0.01) == []


async def test_a_waiting_next_batch_wakes_on_delivery_and_on_close() -> None:
    sub = Numbers()
    waiting = asyncio.create_task(sub.next_batch(10))
    await asyncio.sleep(0.01)
    sub._deliver([7])
    assert await waiting == [7]
    waiting = asyncio.create_task(sub.next_batch(10))
    await asyncio.sleep(0.01)
    await sub.aclose()
    assert await asyncio.wait_for(waiting, 1) == []
    sub._deliver([8])  # after close: dropped
    with pytest.raises(FatalTransportError, match="closed"):  # never [] at once, for ever
        await sub.next_batch(10)


async def test_withdrawn_deliveries_are_not_handed_out() -> None:
    sub = Numbers()
    sub._deliver(range(10))
    sub._withdraw(lambda n: n % 2 == 0)
    assert await sub.next_batch(100) == [0, 2, 4, 6, 8]


async def test_a_failure_is_raised_once_the_buffer_is_empty_until_recovered() -> None:
    sub = Numbers()
    sub._deliver([1])
    sub._fail(TransportError("cut off"))
    assert await sub.next_batch(10) == [1]  # what was received first
    for _ in range(2):
        with pytest.raises(TransportError, match="cut off"):
            await sub.next_batch(10)
    sub._recovered()
    assert await sub.next_batch(10, timeout=0.01) == []


async def test_iteration_yields_each_delivery() -> None:
    sub = Numbers()
    sub._deliver([1, 2, 3])
    seen = []
    async for n in sub:
        seen.append(n)
        if n == 3:
            await sub.aclose()
    assert seen == [1, 2, 3]


def test_a_delivery_settles_once() -> None:
    delivery = SettleOnce()
    delivery._settle_once()
    with pytest.raises(TransportError, match="already acked or nacked"):
        delivery._settle_once()


@pytest.mark.parametrize(
    ("module", "subscription", "delivery"),
    [
        ("factbus.transport.memory", "MemorySubscription", "MemoryDelivery"),
        ("factbus_amqp.transport", "AmqpSubscription", "AmqpDelivery"),
        ("factbus_kafka", "KafkaSubscription", "KafkaDelivery"),
        ("factbus_kombu.consumer", "KombuSubscription", "KombuDelivery"),
    ],
)
def test_every_adapter_builds_on_the_buffered_subscription(
    module: str, subscription: str, delivery: str
) -> None:
    loaded = importlib.import_module(module)
    assert issubclass(getattr(loaded, subscription), BufferedSubscription)
    assert issubclass(getattr(loaded, delivery), SettleOnce)
    # the shape is inherited, not written again
    for name in ("next_batch", "__aiter__", "_iterate"):
        assert name not in vars(getattr(loaded, subscription)), (subscription, name)


def test_fatal_is_a_transport_error() -> None:
    assert issubclass(FatalTransportError, TransportError)
