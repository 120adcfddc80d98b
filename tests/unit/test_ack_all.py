"""factbus.transport.ack_all: a step's deliveries acked in one call, as each
``await delivery.ack()`` would (the memory transport's without a coroutine each)."""

from __future__ import annotations

import uuid

import pytest

from factbus.errors import TransportError
from factbus.transport import Message, ack_all
from factbus.transport.memory import MemoryDelivery, MemorySubscription, MemoryTransport


async def _taken(
    count: int,
) -> tuple[MemoryTransport, MemorySubscription, list[MemoryDelivery]]:
    transport = MemoryTransport(f"memory://ack-all-{uuid.uuid4().hex}")
    await transport.connect()
    subscription = await transport.subscribe("t", "g")
    await transport.publish("t", [Message(b"%d" % i, str(i)) for i in range(count)])
    return transport, subscription, list(await subscription.next_batch(count))


async def test_acked_deliveries_do_not_come_back_and_the_others_do() -> None:
    transport, subscription, batch = await _taken(5)
    await ack_all(batch[:3])
    await subscription.aclose()
    again = await transport.subscribe("t", "g")
    back = await again.next_batch(10, timeout=0.1)
    assert [d.body for d in back] == [b"3", b"4"]
    assert all(d.redelivered for d in back)
    await transport.aclose()


async def test_a_delivery_acked_twice_is_refused_in_a_batch_too() -> None:
    transport, _, batch = await _taken(3)
    await batch[1].ack()
    with pytest.raises(TransportError, match="already acked or nacked"):
        await ack_all(batch)
    await transport.aclose()


class _Counted:
    """A delivery of another kind: ack_all awaits its ack()."""

    def __init__(self) -> None:
        self.acks = 0
        self.body = b""
        self.headers: dict[str, str] = {}
        self.redelivered = False

    async def ack(self) -> None:
        self.acks += 1

    async def nack(self, requeue: bool = True) -> None:
        raise AssertionError("not expected")


async def test_deliveries_of_mixed_kinds_are_each_acked_once() -> None:
    transport, subscription, batch = await _taken(2)
    others = [_Counted(), _Counted()]
    await ack_all([batch[0], others[0], batch[1], others[1]])  # type: ignore[list-item]  # _Counted is a Delivery by shape
    assert [o.acks for o in others] == [1, 1]
    assert subscription.unacked == {}
    await transport.aclose()
