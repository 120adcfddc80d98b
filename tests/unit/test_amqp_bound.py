"""``Live.bound()``: work on an AMQP connection ends with ``ConnectionLost`` when the
connection is lost, and no other cancellation is mistaken for that.

The broker is not needed: ``Live.bound`` and ``Live.lose`` only track tasks (the
connection they belong to is exercised against RabbitMQ in
tests/conformance/test_amqp_transport.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from factbus_amqp.connection import CONNECTION_ERRORS, ConnectionLost, Live


def live() -> Live:
    return Live(connection=cast("Any", None))


async def wait_bound(link: Live, seconds: float = 30.0) -> None:
    with link.bound():
        await asyncio.sleep(seconds)


async def started(coroutine: Any) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coroutine)
    await asyncio.sleep(0)  # inside the block now
    return task


async def test_losing_the_connection_interrupts_the_bound_work() -> None:
    link = live()
    task = await started(wait_bound(link))
    link.lose("ConnectionResetError: reset")
    with pytest.raises(ConnectionLost, match="reset"):
        await task
    assert isinstance(task.exception(), CONNECTION_ERRORS)
    assert task.cancelling() == 0
    assert not link.working and not link.interrupted


async def test_work_bound_to_a_lost_connection_fails_at_once() -> None:
    link = live()
    link.lose("closed by the broker")
    with pytest.raises(ConnectionLost, match="closed by the broker"):
        await wait_bound(link, 0)


async def test_a_timeout_arriving_with_the_loss_stays_a_timeout() -> None:
    link = live()

    async def timed() -> None:
        async with asyncio.timeout(0):
            await wait_bound(link)

    task = asyncio.get_running_loop().create_task(timed())
    await asyncio.sleep(0)  # the timeout has fired: its cancellation is pending
    link.lose()
    with pytest.raises(TimeoutError):
        await task


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    link = live()
    task = await started(wait_bound(link))
    task.cancel()
    link.lose()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_work_that_left_the_block_is_not_touched() -> None:
    link = live()

    async def left() -> str:
        with link.bound():
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        return "done"

    task = await started(left())
    await asyncio.sleep(0.01)  # out of the block, sleeping
    link.lose()
    assert await task == "done"


async def test_the_task_that_loses_the_connection_is_not_cancelled() -> None:
    link = live()
    with link.bound():
        link.lose()
        await asyncio.sleep(0)  # no cancellation comes
    assert not link.alive


async def test_work_in_a_task_already_being_cancelled_still_sees_the_loss() -> None:
    """Clean-up on the connection in a task that is being cancelled (a ``finally``
    after a ``CancelledError``: its cancellation count stays 1, as
    ``asyncio.timeout`` allows for) gets ``ConnectionLost`` for a lost connection,
    like any other work, and the task still ends cancelled."""
    link = live()
    outcome: list[str] = []

    async def clean_up_when_cancelled() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            try:
                await wait_bound(link)
            except ConnectionLost:
                outcome.append("lost")

    task = await started(clean_up_when_cancelled())
    task.cancel()
    await asyncio.sleep(0)  # the cancellation delivered: in the clean-up's block now
    assert task in link.working and task.cancelling() == 1
    link.lose()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["lost"]
    assert not link.working and not link.interrupted
