"""The test brokers of factbus's own suite, and of scripts and apps its tests start.

Broker URLs come from ``FACTBUS_TEST_<NAME>_URL`` variables (``scripts/brokers.sh
env`` prints them), else the local defaults below. In CI (``FACTBUS_CI=1``) a
test whose broker does not answer fails instead of skipping. An installed
module, so that helper modules imported outside pytest's path (an app a test
runs with ``factbus worker``, a worker script) reach it the same way as tests
(``tests/conftest.py`` re-exports it).

Also: :func:`unavailable` (skip, or fail in CI, for want of a broker, server or
command) and :func:`remove_topic` (best-effort clean-up of what a test's topic
made on its broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Final, NoReturn
from urllib.parse import urlsplit

import pytest

DEFAULT_URLS: Final = {
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "kafka": "kafka://127.0.0.1:9092",
    "redis": "kombu+redis://127.0.0.1:6379/0",
    "kombu_amqp": "kombu+amqp://guest:guest@127.0.0.1:5672//",
    "postgres": "postgresql://factbus:factbus@127.0.0.1:5432/factbus",
}


def broker_url(name: str) -> str:
    """The URL of test broker ``name`` (a key of :data:`DEFAULT_URLS`); skips the
    calling test (or, in CI, fails it) when the broker does not answer."""
    url = os.environ.get(f"FACTBUS_TEST_{name.upper()}_URL", DEFAULT_URLS[name])
    parts = urlsplit(url.split(",")[0])
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=2):
            pass
    except OSError as error:
        unavailable(f"{name} broker at {host}:{port} does not answer ({error}); run `make brokers`")
    return url


def unavailable(message: str) -> NoReturn:
    """Stop the calling test for want of something it needs (a broker, a server, a
    command): skip it, or, in CI (``FACTBUS_CI=1``), fail it with ``message``."""
    if os.environ.get("FACTBUS_CI"):
        pytest.fail(message)
    pytest.skip(message)


async def remove_topic(url: str, topic: str, groups: Sequence[str] = ()) -> None:
    """Best effort: remove what ``topic`` made on the broker at ``url`` (errors are
    ignored). AMQP: the groups' queues, the dead-letter queue and both exchanges;
    Kafka: the topic and its dead-letter topic; kombu+redis: every key that names
    the topic (use a unique topic name)."""
    with contextlib.suppress(Exception):
        if url.startswith("amqp"):
            import aio_pika

            connection = await aio_pika.connect(url)
            async with connection:
                channel = await connection.channel()
                for queue in [*(f"{topic}.{g}" for g in groups), f"{topic}.dead-letter"]:
                    await channel.queue_delete(queue)
                for exchange in (topic, f"{topic}.dead-letter"):
                    await channel.exchange_delete(exchange)
        elif url.startswith("kafka"):
            from confluent_kafka.admin import AdminClient

            bootstrap = url.split("://", 1)[1].split("?", 1)[0]
            admin = AdminClient({"bootstrap.servers": bootstrap})
            futures = admin.delete_topics([topic, f"{topic}.dead-letter"], operation_timeout=10)
            for future in futures.values():
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)
        elif url.startswith("kombu+redis"):
            import redis.asyncio as aioredis

            client = aioredis.from_url("redis://" + url.split("://", 1)[1].split("?", 1)[0])
            async with client:
                keys = [key async for key in client.scan_iter(f"*{topic}*")]
                if keys:
                    await client.delete(*keys)
