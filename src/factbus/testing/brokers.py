"""The test brokers of factbus's own suite, and of scripts and apps its tests start.

Broker URLs come from ``FACTBUS_TEST_<NAME>_URL`` variables (``scripts/brokers.sh
env`` prints them), else the local defaults below. In CI (``FACTBUS_CI=1``) a
test whose broker does not answer fails instead of skipping. An installed
module, so that helper modules imported outside pytest's path (an app a test
runs with ``factbus worker``, a worker script) reach it the same way as tests
(``tests/conftest.py`` re-exports it).

Also: :func:`unique` (a name of a test's own), :func:`with_options` (a URL with
query options added), :func:`unavailable`
(skip, or fail in CI, for want of a broker, server or command),
:func:`prepare_group` (a group's queue made before anything is published),
:func:`remove_topics` (best-effort clean-up of what a script's topics made on its
broker; the suite's own tests need none: :mod:`factbus.testing.sweep` removes what
their names made), :func:`drop_schema` (PostgreSQL) and :func:`kafka_bootstrap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Final, NoReturn
from urllib.parse import urlencode, urlsplit

import pytest

from factbus.testing import names
from factbus.transport import open_transport

DEFAULT_URLS: Final = {
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "kafka": "kafka://127.0.0.1:9092",
    "redis": "kombu+redis://127.0.0.1:6379/0",
    "kombu_amqp": "kombu+amqp://guest:guest@127.0.0.1:5672//",
    "postgres": "postgresql://factbus:factbus@127.0.0.1:5432/factbus",
}


def broker_url(name: str) -> str:
    """The URL of test broker ``name`` (a key of :data:`DEFAULT_URLS`); skips the
    calling test (or, in CI, fails it) when the broker does not answer. Noted in
    the run's journal (:mod:`factbus.testing.names`): the calling test's names
    are swept from this broker once it ends."""
    url = os.environ.get(f"FACTBUS_TEST_{name.upper()}_URL", DEFAULT_URLS[name])
    parts = urlsplit(url.split(",")[0])
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=2):
            pass
    except OSError as error:
        unavailable(f"{name} broker at {host}:{port} does not answer ({error}); run `make brokers`")
    names.record_broker(name, url)
    return url


def unique(prefix: str, sep: str = "-") -> str:
    """A name no other test uses, for a test's own topic, queue, node, database or
    schema on the shared brokers: ``prefix``, ``sep`` and 10 random hex digits
    (``sep="_"`` for a name PostgreSQL takes unquoted). Noted in the run's
    journal (:mod:`factbus.testing.names`): every broker object whose name contains
    it is removed once the test ends (:mod:`factbus.testing.sweep`)."""
    made = f"{prefix}{sep}{uuid.uuid4().hex[:10]}"
    names.record(made)
    return made


def with_options(url: str, options: str = "", /, **named: object) -> str:
    """``url`` with query options added after those it has: ``options`` as written
    (``a=1&b=2``), then ``named`` ones URL-encoded. Nothing to add: ``url``."""
    added = "&".join(part for part in (options, urlencode(named)) if part)
    if not added:
        return url
    return f"{url}{'&' if '?' in url else '?'}{added}"


def unavailable(message: str) -> NoReturn:
    """Stop the calling test for want of something it needs (a broker, a server, a
    command): skip it, or, in CI (``FACTBUS_CI=1``), fail it with ``message``."""
    if os.environ.get("FACTBUS_CI"):
        pytest.fail(message)
    pytest.skip(message)


async def prepare_group(url: str, topic: str, group: str) -> None:
    """Where the broker does not replay history to a group it does not know yet
    (AMQP: a group is a queue, made when the group first subscribes), subscribe
    ``group`` to ``topic`` once, so that what is published before its consumers
    start waits for them in its queue. Elsewhere nothing is done."""
    transport = open_transport(url)
    if transport.capabilities.replays_history:
        return
    await transport.connect()
    try:
        await (await transport.subscribe(topic, group)).aclose()
    finally:
        await transport.aclose()


async def remove_topic(url: str, topic: str, groups: Sequence[str] = ()) -> None:
    """:func:`remove_topics` for one topic."""
    await remove_topics(url, [topic], groups)


async def remove_topics(url: str, topics: Sequence[str], groups: Sequence[str] = ()) -> None:
    """Best effort: remove what ``topics`` made on the broker at ``url`` (errors are
    ignored; what was never made is no error). AMQP: each topic's queues
    ``<topic>.<group>`` for ``groups``, its ``dead-letter`` and ``stream`` queues
    and both its exchanges; Kafka: each topic and its dead-letter topic;
    kombu+redis: every key that names a topic (use unique topic names).

    A name list that mixes topics and groups (the conformance suite's
    ``ConformanceContext.names``) is cleaned by passing it as both."""
    with contextlib.suppress(Exception):
        if url.startswith("amqp"):
            await _remove_amqp(url, topics, groups)
        elif url.startswith("kafka"):
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": kafka_bootstrap(url)})
            every = [*topics, *(f"{t}.dead-letter" for t in topics)]
            for future in admin.delete_topics(every, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(future)
        elif url.startswith("kombu+redis"):
            import redis.asyncio as aioredis

            client = aioredis.from_url("redis://" + url.split("://", 1)[1].split("?", 1)[0])
            async with client:
                for topic in topics:
                    keys = [key async for key in client.scan_iter(f"*{topic}*")]
                    if keys:
                        await client.delete(*keys)


async def _remove_amqp(url: str, topics: Sequence[str], groups: Sequence[str]) -> None:
    import aio_pika

    queues = [f"{t}.{g}" for t in topics for g in groups if g != t]
    queues += [f"{t}.{suffix}" for t in topics for suffix in ("dead-letter", "stream")]
    exchanges = [*topics, *(f"{t}.dead-letter" for t in topics)]
    # The URL without its query: factbus's options there mean nothing to aio-pika,
    # and the clean-up needs none of the client's (the core imports no adapter).
    connection = await aio_pika.connect(url.split("?", 1)[0])
    async with connection:
        channel = await connection.channel()
        for name in queues:
            try:
                await channel.queue_delete(name)
            except Exception:  # the broker closed the channel: go on with a new one
                channel = await connection.channel()
        for name in exchanges:
            try:
                await channel.exchange_delete(name)
            except Exception:
                channel = await connection.channel()


async def drop_schema(url: str, schema: str) -> None:
    """Drop PostgreSQL schema ``schema`` and all it holds, if it exists, on the
    database at ``url`` (errors are raised: a test's own schema must go)."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def kafka_bootstrap(url: str) -> str:
    """The ``bootstrap.servers`` of a ``kafka://`` URL (its options dropped)."""
    return url.split("://", 1)[1].split("?", 1)[0]
