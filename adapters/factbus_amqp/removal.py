"""Deleting RabbitMQ queues and exchanges by name, on a plain aio-pika connection:
what :meth:`AmqpTransport.remove <factbus_amqp.transport.AmqpTransport.remove>`
and the bench's raw baseline use to leave nothing behind. Only the names given
are touched."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from factbus.errors import MissingDriver
from factbus_amqp.config import AmqpConfig

try:
    import aio_pika
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingDriver("amqp", "amqp") from error


async def connect_raw(config: AmqpConfig) -> Any:
    """A plain aio-pika connection (no factbus on it) to the broker ``config``
    names, over TLS when it says so: what the baseline, the study scripts and
    :func:`delete` use."""
    return await aio_pika.connect(
        host=config.host,
        port=config.port,
        login=config.username,
        password=config.password,
        virtualhost=config.vhost,
        ssl=config.tls,
    )


async def delete(config: AmqpConfig, queues: Sequence[str], exchanges: Sequence[str]) -> list[str]:
    """Delete ``queues`` (with the messages they hold, consumers or not), then
    ``exchanges``, on the broker ``config`` names. What does not exist is no error
    (RabbitMQ's deletes are idempotent). Returns a line per object not removed,
    naming it and the broker's reason (``[]``: all gone).

    :raises Exception: the broker cannot be reached (aio-pika's connection error).
    """
    problems: list[str] = []
    connection = await connect_raw(config)
    try:
        for what, operation, names in (
            ("queue", "queue_delete", queues),
            ("exchange", "exchange_delete", exchanges),
        ):
            for name in names:
                try:  # a failed delete closes its channel: one channel per delete
                    channel = await connection.channel()
                    try:
                        await getattr(channel, operation)(name)
                    finally:
                        with contextlib.suppress(Exception):
                            await channel.close()
                except Exception as error:
                    problems.append(f"rabbitmq {what} {name!r}: {error}")
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return problems
