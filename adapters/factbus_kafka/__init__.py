"""factbus's Kafka transport on confluent-kafka: ``kafka://host:port[,host:port]?options``.

Importing this package without confluent-kafka installed raises
:class:`~factbus.errors.MissingDriver` (``pip install 'factbus[kafka]'``).
See :mod:`factbus_kafka.transport` (topology, publishing, reconnection),
:mod:`factbus_kafka.subscription` (consuming; its thread in :mod:`factbus_kafka.consumer`),
:mod:`factbus_kafka.offsets` (acknowledgement, nack) and
:mod:`factbus_kafka.config` (every URL option) and docs/adapters/kafka.md.
"""

from __future__ import annotations

from factbus.headers import HEADER_MESSAGE_ID
from factbus_kafka import _driver as _driver  # raises MissingDriver first
from factbus_kafka.config import KafkaConfig
from factbus_kafka.delivery import KafkaDelivery
from factbus_kafka.subscription import KafkaSubscription
from factbus_kafka.transport import KafkaTransport

__all__ = [
    "HEADER_MESSAGE_ID",
    "KafkaConfig",
    "KafkaDelivery",
    "KafkaSubscription",
    "KafkaTransport",
]
