"""RabbitMQ with ``history=stream`` against the real broker: the whole conformance
suite (the broker-restart test is left out: the broker is shared), the log-reader
tests (new reader from the first offset, exact resume, nack), and the URL option."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from conftest import broker_url
from factbus.errors import ConfigError
from factbus.testing.brokers import unavailable, unique, with_options
from factbus.testing.conformance import ConformanceContext, TransportConformance, collect
from factbus.transport import Message, delivery_position
from factbus_amqp import AmqpTransport
from factbus_amqp.config import AmqpConfig

pytestmark = pytest.mark.broker("amqp")


def stream_url() -> str:
    return with_options(broker_url("amqp"), "history=stream&reconnect_delay=0.1")


class TestAmqpStreamTransport(TransportConformance):
    timeout = 30.0

    @pytest.fixture
    async def ctx(self) -> AsyncIterator[ConformanceContext]:
        context = ConformanceContext(stream_url(), None, self.timeout)
        try:
            yield context
        finally:
            await context.aclose()


def test_history_option() -> None:
    assert AmqpConfig.from_url("amqp://h/").history == "queue"
    assert AmqpConfig.from_url("amqp://h/?history=STREAM").history == "stream"
    with pytest.raises(ConfigError, match=r"history.*must be one of queue, stream"):
        AmqpConfig.from_url("amqp://h/?history=log")
    assert AmqpTransport("amqp://h/").position_key("t") is None
    assert AmqpTransport("amqp://h/v?history=stream").position_key("t") == "amqp-stream:v:t.stream"


async def test_group_named_stream_is_refused() -> None:
    transport = AmqpTransport(stream_url())
    with pytest.raises(ConfigError, match="reserved for the topic's stream"):
        await transport.subscribe("t", "stream")


async def test_reading_a_truncated_stream_warns() -> None:
    """A stream whose retention policy removed records: a new reader starts past
    offset 0 and is warned that it misses history (catch up from a peer)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        unavailable("rabbitmqctl is not installed (scripts/brokers.sh installs RabbitMQ)")
    url = stream_url()
    topic = unique("trunc")
    policy = f"factbus-test-{topic}"
    limits = '{"max-length-bytes": 3000, "stream-max-segment-size-bytes": 1000}'
    pattern = f"^{topic}\\.stream$"
    await asyncio.to_thread(
        subprocess.run,
        [rabbitmqctl, "set_policy", "--apply-to", "queues", policy, pattern, limits],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        async with AmqpTransport(url) as transport:
            for i in range(20):  # 100 messages of ~110 bytes: many 1000-byte segments
                batch = [Message(f"m-{i}-{j}-{'x' * 100}".encode(), f"m-{i}-{j}") for j in range(5)]
                await transport.publish(topic, batch)
            with capture_logs() as logs:
                reader = await transport.subscribe_log(topic, "late", None)
                received = await collect(reader, 1, 30.0)
                await reader.aclose()
        first = delivery_position(received[0])
        assert first is not None and first > 1  # offsets before it are gone
        warnings = [e for e in logs if e["event"] == "amqp stream lost history"]
        assert len(warnings) == 1
        assert (warnings[0]["asked"], warnings[0]["first"]) == (0, first - 1)
    finally:
        clear = [rabbitmqctl, "clear_policy", policy]
        await asyncio.to_thread(subprocess.run, clear, capture_output=True, timeout=60)
