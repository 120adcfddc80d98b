"""factbus's AMQP 0-9-1 (RabbitMQ) transport for ``amqp://`` and ``amqps://`` URLs.

Needs aio-pika (``pip install 'factbus[amqp]'``); importing this package without
it raises :class:`factbus.errors.MissingDriver`. The transport is
:class:`AmqpTransport`; its URL options are described in
:mod:`factbus_amqp.config`, its topology and reconnection in
:mod:`factbus_amqp.connection`, and its delivery semantics in
:mod:`factbus_amqp.transport`.
"""

from __future__ import annotations

from factbus.errors import MissingDriver

try:
    import aio_pika  # noqa: F401
except ImportError as error:
    raise MissingDriver("amqp", "amqp", error) from error

from factbus_amqp.transport import AmqpTransport

__all__ = ["AmqpTransport"]
