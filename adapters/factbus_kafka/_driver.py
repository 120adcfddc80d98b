"""The confluent-kafka driver, imported in one place so that a missing install
says exactly what to ``pip install`` (:class:`~factbus.errors.MissingDriver`)."""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Final

from factbus import envelope
from factbus.errors import MissingDriver
from factbus.headers import HEADER_MESSAGE_ID

try:
    from confluent_kafka import (
        Consumer,
        ConsumerGroupTopicPartitions,
        KafkaError,
        KafkaException,
        Message,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec
    from confluent_kafka.cimpl import NewTopic
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDriver("kafka", "kafka", exc) from exc

if TYPE_CHECKING:
    from collections.abc import Callable

HeaderList = list[tuple[str, str | bytes | None]]
"""The header shape confluent-kafka takes and returns."""


def decode_headers(raw: object) -> dict[str, str]:
    """Kafka record headers as ``{name: text}`` (UTF-8, undecodable bytes replaced;
    a null value becomes ``""``; the last of repeated names wins)."""
    if not raw:
        return {}
    pairs = raw.items() if isinstance(raw, dict) else raw
    decoded: dict[str, str] = {}
    for name, value in pairs:  # type: ignore[attr-defined]
        if isinstance(value, bytes):
            decoded[name] = value.decode("utf-8", "replace")
        else:
            decoded[name] = value or ""
    return decoded


def decode_record_headers(record: Message) -> dict[str, str]:
    """A consumed record's headers (:func:`decode_headers`), with
    ``x-factbus-message-id`` read from the record's key where the record
    carries no such header: the producer leaves it out when a message's id is
    its key (docs/decisions.md, "Kafka records: the message id as the key"),
    so every record, older ones included, reads with the same headers."""
    headers = decode_headers(record.headers())
    if HEADER_MESSAGE_ID not in headers:
        key = record.key()
        if key is not None:
            headers[HEADER_MESSAGE_ID] = (
                key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            )
    return headers


def _record_untracker() -> Callable[[list[Message]], int] | None:
    """``factbus_native.untrack_records`` for librdkafka's ``Message`` type, or
    ``None`` without the native helper (not built, ``FACTBUS_NATIVE=0``, or a
    build older than this factbus): then records stay tracked, as before."""
    if not envelope.NATIVE:
        return None
    untrack = getattr(importlib.import_module("factbus_native"), "untrack_records", None)
    if untrack is None:
        return None
    return functools.partial(untrack, record_type=Message)


untrack_records: Final = _record_untracker()
"""Take a list's consumed records out of the cyclic garbage collector's lists
(their number), or ``None`` when the native helper is not in use. A consumed
record refers only to strings, bytes, a ``KafkaError`` and its headers list,
so it cannot be part of a reference cycle and the collector need not walk it,
nor move it through its generations while a backlog waits (docs/decisions.md,
"Kafka records out of the cyclic collector's lists"). Callers must never call a
record's ``set_*`` methods with anything that could refer back to it, nor put
such a thing into the list its ``headers()`` returns."""


__all__ = [
    "AdminClient",
    "Consumer",
    "ConsumerGroupTopicPartitions",
    "HeaderList",
    "KafkaError",
    "KafkaException",
    "Message",
    "NewTopic",
    "OffsetSpec",
    "Producer",
    "TopicPartition",
    "decode_headers",
    "decode_record_headers",
    "untrack_records",
]
