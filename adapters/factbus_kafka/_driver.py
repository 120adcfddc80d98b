"""The confluent-kafka driver, imported in one place so that a missing install
says exactly what to ``pip install`` (:class:`~factbus.errors.MissingDriver`)."""

from __future__ import annotations

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
]
