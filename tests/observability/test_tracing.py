"""OpenTelemetry across processes and brokers.

A publisher process starts a trace and publishes a fact; a consumer process
handles it. Each installs the SDK with an in-memory exporter (trace_node.py)
and reports its spans; the handler's span must continue the publisher's trace
(same trace id, child of the ``publish <topic>`` span, linked to it), with the
messaging semantic-convention attributes. Over RabbitMQ and Kafka.

Also: without opentelemetry installed a bus runs and never traces, and a bus
with tracing off injects no trace headers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from obs_support import transport_url

from factbus.testing.brokers import unique

HERE = Path(__file__).resolve().parent
NODE = str(HERE / "trace_node.py")


async def _line(process: asyncio.subprocess.Process, prefix: str, timeout: float) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            raw = await process.stdout.readline()
            if not raw:
                stderr = b""
                if process.stderr is not None:
                    stderr = await process.stderr.read()
                raise AssertionError(f"{prefix!r} never came; stderr:\n{stderr.decode()[-3000:]}")
            line = raw.decode().rstrip("\n")
            if line.startswith(prefix):
                return line[len(prefix) :]


async def _start(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "FACTBUS_LOG_LEVEL": "error"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        NODE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("amqp", marks=pytest.mark.broker("amqp")),
        pytest.param("kafka", marks=pytest.mark.broker("kafka")),
    ],
)
async def test_the_handler_continues_the_publishers_trace(kind: str) -> None:
    topic = unique("obs-trace")
    url = transport_url(kind, topic)
    consumer = await _start("consume", url, topic, "1")
    publisher: asyncio.subprocess.Process | None = None
    try:
        await _line(consumer, "READY", 60)
        publisher = await _start("publish", url, topic, "42")
        head = await _line(publisher, "HASH ", 60)
        sent: list[dict[str, Any]] = orjson.loads(await _line(publisher, "SPANS ", 60))
        received: list[dict[str, Any]] = orjson.loads(await _line(consumer, "SPANS ", 90))
        assert await publisher.wait() == 0
        assert await consumer.wait() == 0
    finally:
        for process in (consumer, publisher):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()

    checkout = next(s for s in sent if s["name"] == "checkout")
    publish = next(s for s in sent if s["name"] == f"publish {topic}")
    assert publish["kind"] == "PRODUCER"
    assert publish["trace_id"] == checkout["trace_id"]
    assert publish["parent_id"] == checkout["span_id"]
    system = "rabbitmq" if kind == "amqp" else "kafka"
    assert publish["attributes"]["messaging.system"] == system
    assert publish["attributes"]["messaging.destination.name"] == topic
    assert publish["attributes"]["messaging.operation.type"] == "publish"
    assert publish["attributes"]["messaging.message.id"] == head

    handle = next(s for s in received if s["name"] == "handle Trace.Order")
    assert handle["kind"] == "CONSUMER"
    assert handle["trace_id"] == publish["trace_id"]  # one trace across two processes
    assert handle["parent_id"] == publish["span_id"]
    assert handle["parent_remote"] is True
    assert handle["links"] == [{"trace_id": publish["trace_id"], "span_id": publish["span_id"]}]
    attributes = handle["attributes"]
    assert attributes["messaging.system"] == system
    assert attributes["messaging.destination.name"] == topic
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.consumer.group.name"] == f"trace-consumer-{topic}"
    assert attributes["messaging.message.id"] == head
    assert attributes["factbus.fact.type"] == "Trace.Order"
    assert handle["status"] == "UNSET"


NO_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
from factbus import Bus, Fact
from factbus import tracing

async def main():
    assert tracing.AVAILABLE is False
    bus = Bus("memory://no-otel", "memory://", node="n", topic="t")
    seen = []
    bus.handler("A")(seen.append)
    async with bus:
        await bus.publish(Fact("A", {"i": 1}))
        await bus.drain()
    assert len(seen) == 1 and bus._tracing is None and bus._instrumentation is None
    print("OK")

asyncio.run(main())
"""


def test_without_opentelemetry_a_bus_runs_and_never_traces() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_OTEL], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


async def test_tracing_off_injects_no_trace_headers() -> None:
    from factbus import Bus, Fact
    from factbus.transport.memory import MemoryTransport

    namespace = unique("obs")
    transport = MemoryTransport(f"memory://{namespace}")
    subscription = await transport.subscribe("t", "probe")
    bus = Bus(transport, "memory://", node="n", topic="t", consume=False, tracing=False)
    async with bus:
        await bus.publish(Fact("A", {"i": 1}))
        (delivery,) = await subscription.next_batch(10, timeout=1)
    assert "traceparent" not in delivery.headers
    assert "x-factbus-published-at" in delivery.headers
