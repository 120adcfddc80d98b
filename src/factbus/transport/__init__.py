"""Transports: the broker adapters and how a URL picks one.

Adapters register under the entry-point group ``factbus.transports`` with the
URL scheme as name (``kombu+redis://`` looks up ``kombu``), so a third party
adds one without touching the core. Each adapter class takes the URL as its
only constructor argument and reads its options from the URL's query string.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from factbus import plugins
from factbus.errors import ConfigError
from factbus.transport.base import (
    Capabilities,
    DeadLetter,
    Delivery,
    DeliveryBatch,
    DeliveryList,
    LogReader,
    Message,
    RemovesTopics,
    Subscription,
    Transport,
    TransportBase,
    ack_all,
    dead_letter_topic,
    delivery_position,
    take_batch,
)
from factbus.urls import redact

__all__ = [
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "DeliveryBatch",
    "DeliveryList",
    "LogReader",
    "Message",
    "RemovesTopics",
    "Subscription",
    "Transport",
    "TransportBase",
    "ack_all",
    "dead_letter_topic",
    "delivery_position",
    "open_transport",
    "take_batch",
    "transport_class",
]

GROUP = "factbus.transports"

# Used when factbus runs from a source tree without installed entry points.
_BUILTIN = {
    "memory": ("factbus.transport.memory:MemoryTransport", None),
    "amqp": ("factbus_amqp:AmqpTransport", "amqp"),
    "amqps": ("factbus_amqp:AmqpTransport", "amqp"),
    "kafka": ("factbus_kafka:KafkaTransport", "kafka"),
    "kombu": ("factbus_kombu:KombuTransport", "kombu"),
}


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigError(f"transport URL {redact(url)!r} has no scheme (e.g. memory://, kafka://)")
    return scheme.split("+", 1)[0]


def transport_class(url: str) -> type[Any]:
    """The adapter class registered for ``url``'s scheme.

    :raises ConfigError: no adapter is registered for the scheme.
    :raises MissingDriver: the adapter's driver is not installed (says which extra).
    """
    cls: type[Any] = plugins.load(GROUP, _scheme(url), _BUILTIN, what="transport")
    return cls


def open_transport(url: str) -> Transport:
    """A new, not yet connected transport for ``url``."""
    transport: Transport = transport_class(url)(url)
    return transport
