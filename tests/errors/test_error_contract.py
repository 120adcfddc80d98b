"""The error contract (transport/base.py, "Errors") on real brokers.

Fatal: a group queue that already exists with other arguments (RabbitMQ answers
``PRECONDITION_FAILED``) cannot be mended by retrying: ``factbus worker`` exits
with status 3 at once (no restarts) and says why; ``Bus.start`` raises
``FatalTransportError`` on AMQP and on kombu over AMQP.

Transient: a kombu consumer cut off from its broker for longer than its
``factbus_retry_timeout`` raises ``TransportError`` from ``next_batch``; the
bus logs it, retries with back-off and, once the connection is back, goes on
handling facts. The cut is made with the fault proxy in front of the broker,
for this test's own connections only (the shared broker is not touched).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiormq
import pytest

from conftest import broker_url
from factbus import Bus, Fact, FatalTransportError
from factbus.testing.brokers import unique, with_options
from factbus.testing.commands import WorkerCommand

HERE = Path(__file__).resolve().parent
FACT_TYPE = "Test.ErrorContract"


def plain_amqp(url: str) -> str:
    """The broker's address as aiormq takes it (no factbus options)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@pytest.fixture
async def conflicting_queue() -> AsyncIterator[tuple[str, str]]:
    """(topic, group) whose group queue ``<topic>.<group>`` already exists on
    RabbitMQ with an argument factbus does not declare (``x-max-length``)."""
    topic, group = unique("errc-t"), "g"
    connection = await aiormq.connect(plain_amqp(broker_url("amqp")))
    channel = await connection.channel()
    await channel.queue_declare(f"{topic}.{group}", durable=True, arguments={"x-max-length": 7})
    try:
        yield topic, group
    finally:
        await connection.close()


def error_worker(transport: str, topic: str, group: str) -> WorkerCommand:
    """``factbus worker error_app:build_bus`` as a subprocess, stdout and stderr
    collected as one stream."""
    env = {
        **os.environ,
        "ERROR_APP_TRANSPORT": transport,
        "ERROR_APP_TOPIC": topic,
        "ERROR_APP_GROUP": group,
        "FACTBUS_LOG_LEVEL": "warning",
    }
    return WorkerCommand("error_app:build_bus", app_dir=HERE, env=env, merge_stdout=True)


async def wait_handled(worker: WorkerCommand, count: int, timeout: float) -> None:
    """Wait until the progress line says ``count`` facts were handled (no more)."""
    for _ in range(int(timeout / 0.2)):
        if worker.handled() >= count:
            break
        await asyncio.sleep(0.2)
    assert worker.handled() == count, worker.tail(20)


@pytest.mark.broker("amqp")
async def test_a_queue_declared_with_other_arguments_stops_the_worker_with_status_3(
    conflicting_queue: tuple[str, str],
) -> None:
    topic, group = conflicting_queue
    async with error_worker(broker_url("amqp"), topic, group) as worker:
        assert await worker.exit_status() == 3, worker.lines
    said = "\n".join(worker.lines)
    assert "PRECONDITION_FAILED" in said, said
    assert f"{topic}.{group}" in said, said
    assert "worker 0 exited with status 3" in said, said
    # fatal: not restarted
    assert sum("cannot start" in line for line in worker.lines) == 1, said


@pytest.mark.broker("amqp")
@pytest.mark.parametrize("broker", ["amqp", "kombu_amqp"])
async def test_bus_start_raises_fatal_on_a_conflicting_queue(
    conflicting_queue: tuple[str, str], broker: str
) -> None:
    topic, group = conflicting_queue
    bus = Bus(broker_url(broker), "memory://", topic=topic, group=group, node="errc")
    with pytest.raises(FatalTransportError, match="PRECONDITION_FAILED"):
        await bus.start()
    await bus.aclose()


async def publish(url: str, topic: str, count: int, tag: str) -> None:
    async with Bus(url, "memory://", topic=topic, node="errc-publisher", consume=False) as bus:
        await bus.publish(*(Fact(FACT_TYPE, {"n": n, "tag": tag}) for n in range(count)))


@pytest.mark.broker("amqp")
@pytest.mark.faults
async def test_a_consumer_cut_off_for_longer_than_its_retry_timeout_is_retried() -> None:
    from factbus.testing.faultproxy import FaultProxy, through, upstream_of

    direct = broker_url("kombu_amqp")
    topic, group = unique("errc-t"), "g"
    with FaultProxy(upstream_of(direct)).running() as proxy:
        proxied = with_options(through(plain_amqp(direct), proxy), "factbus_retry_timeout=1")
        async with error_worker(proxied, topic, group) as worker:
            await worker.wait_for("1/1 up")
            await publish(direct, topic, 5, "before")
            await wait_handled(worker, 5, timeout=30)

            proxy.refuse()  # the broker is "down" for this worker only
            await worker.wait_for("receiving failed; retrying", timeout=30)
            await publish(direct, topic, 7, "during")  # queued at the broker meanwhile
            proxy.passthrough()

            await wait_handled(worker, 12, timeout=45)
            assert worker.process is not None and worker.process.returncode is None
            worker.process.terminate()
            assert await worker.exit_status() == 0, worker.lines[-20:]


@pytest.mark.broker("amqp")
@pytest.mark.faults
async def test_a_queue_that_cannot_be_restored_stops_a_running_bus_with_the_error() -> None:
    """Mid-run: after a lost connection the group queue is declared again, and it
    now exists with other arguments: ``Bus.run`` raises, it does not retry forever."""
    from factbus.testing.faultproxy import FaultProxy, through, upstream_of

    direct = broker_url("amqp")
    topic, group = unique("errc-t"), "g"
    with FaultProxy(upstream_of(direct)).running() as proxy:
        proxied = through(plain_amqp(direct), proxy)
        bus = Bus(proxied, "memory://", topic=topic, group=group, node="errc")
        run = asyncio.create_task(bus.run())
        try:
            for _ in range(100):
                if bus.caught_up:
                    break
                await asyncio.sleep(0.1)
            assert bus.caught_up
            connection = await aiormq.connect(plain_amqp(direct))
            channel = await connection.channel()
            await channel.queue_delete(f"{topic}.{group}")
            await channel.queue_declare(
                f"{topic}.{group}", durable=True, arguments={"x-max-length": 7}
            )
            await connection.close()
            proxy.reset_connections()
            with pytest.raises(FatalTransportError, match="PRECONDITION_FAILED"):
                await asyncio.wait_for(run, 60)
            assert isinstance(bus.failure, FatalTransportError)
        finally:
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
