"""A subscription's channel incarnation (``_ConsumerChannel``) that goes away while
its acks are queued: ``stop()`` voids them, and a ``drain()`` (``aclose``) then
returns at once instead of waiting for a sending task that will never run.

The broker is not needed: no settlement is sent (the sending task is cancelled
before its first step, as when the connection is lost in the same turn of the
loop as the ack; the channel's own sending is exercised against RabbitMQ in
tests/conformance/test_amqp_transport.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from factbus_amqp.transport import _ConsumerChannel


async def test_drain_after_the_channel_stopped_before_its_acks_were_sent_returns() -> None:
    state = _ConsumerChannel(cast("Any", None), cast("Any", None))
    state.settle(1, None)  # an ack queued: the sending task exists, not yet run
    state.stop()  # the channel went away in the same turn of the loop
    # Not a measurement: without the fix drain() loops for its whole timeout
    # (an hour here), and this bound turns that hang into a failure.
    async with asyncio.timeout(30):
        await state.drain(3600)
    state.settle(2, None)  # void: nothing queued, no task made
    assert not state.alive
