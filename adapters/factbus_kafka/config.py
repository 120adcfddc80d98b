"""``kafka://`` URLs: parsed into :class:`KafkaConfig`, mapped onto librdkafka settings.

URL: ``kafka://[user:password@]host:port[,host:port...][?option=value&...]``.
Brokers are listed comma-separated in the netloc. Options (defaults in brackets):

Topology
    ``partitions`` [6]
        Partitions of each topic the adapter creates (existing topics are left as
        they are). Dead-letter topics always get one partition (they keep order).
    ``replication_factor`` [1]
        Replication factor of created topics.

Publishing
    ``publish_timeout`` [30.0]
        Seconds librdkafka keeps retrying a message (``message.timeout.ms``)
        before its delivery report fails and ``publish`` raises ``PublishError``.
    Producers use ``linger.ms=2``: ``publish`` hands over its whole batch at once
    and then waits for its confirms, so a call's last batches wait out the linger
    before it returns. Many small calls made concurrently cost the broker a
    produce request per partition per linger period instead; such an
    application may set ``producer.linger.ms=5``, one that awaits each large
    call before the next ``producer.linger.ms=1`` (docs/adapters/kafka.md has
    the measured trade-off).

Consuming
    ``session_timeout`` [10.0]
        Seconds without heartbeat before the group coordinator evicts a member
        (``session.timeout.ms``; the broker's minimum is 6 by default).
    ``heartbeat_interval`` [1.0]
        Seconds between heartbeats (``heartbeat.interval.ms``): members notice a
        rebalance within this delay, so it bounds how long a join takes.
    ``commit_interval`` [1.0]
        Seconds between automatic commits of acknowledged offsets
        (``auto.commit.interval.ms``); offsets are also committed synchronously
        when partitions are revoked and when a subscription closes.
    ``join_timeout`` [15.0]
        Seconds ``subscribe`` waits for the first partition assignment before it
        returns anyway (nothing is lost either way: a new group starts from the
        earliest offset).
    ``poll_interval`` [0.1]
        Seconds the consumer thread waits in one ``consume`` call; bounds how soon
        it applies seeks and stores offsets when no message arrives.
    ``fetch_wait`` [0.1]
        Seconds the broker may hold a fetch with no data (``fetch.wait.max.ms``).
        Low values make newly assigned partitions and seeks (nacks) take effect
        sooner, at the cost of more idle fetch requests.
    ``fetch_batch`` [1000]
        Messages taken from librdkafka at once, at most: the consumer thread waits
        for one message and then takes what is already queued, never for a full
        batch (waiting for one held every message up to ``poll_interval``).
    ``max_buffered`` [10000]
        Received messages buffered per subscription, at most. When full, the
        consumer thread stops taking records from librdkafka (whose own queue,
        bounded below, then stops fetching) until there is room for a
        ``fetch_batch``; if none comes within ``heartbeat_interval``, it pauses
        the partitions so that it can go on serving rebalances (a pause drops
        librdkafka's prefetched records, fetched again on resume). Also
        bounds librdkafka's own prefetch queue in messages (``queued.min.messages``;
        librdkafka's default is 100,000 per partition).
    ``prefetch_kbytes`` [4096]
        KiB librdkafka may prefetch ahead of the subscription's buffer
        (``queued.max.messages.kbytes``; librdkafka's default is 64 MiB) and the
        most one fetch response may carry (``fetch.max.bytes``; default 50 MiB).
        A consumer holds at most about ``max_buffered`` messages plus this many
        KiB, whatever the backlog on the broker. A record larger than this is
        still fetched (alone).
        When that prefetch queue is full the fetcher looks again after 1 ms
        (``fetch.queue.backoff.ms``; librdkafka's default of 1 s made a fast
        consumer wait for its next fetch).
    ``group_protocol`` [classic]
        ``classic`` or ``consumer`` (KIP-848, ``group.protocol``).

Connection
    ``client_id`` [factbus]
    ``request_timeout`` [30.0]
        Seconds for admin and metadata requests (topic creation, watermarks).
    ``reconnect_backoff_max`` [1.0]
        Longest pause between reconnection attempts to a broker that went away
        (``reconnect.backoff.max.ms``; librdkafka's default of 10 s would delay
        recovery after a broker restart by up to that much).

Security (mapped to the librdkafka key with ``_`` replaced by ``.``)
    ``security_protocol`` (plaintext, ssl, sasl_plaintext, sasl_ssl),
    ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...),
    ``sasl_username``, ``sasl_password`` (also taken from the URL's user info),
    ``ssl_ca_location``, ``ssl_certificate_location``, ``ssl_key_location``,
    ``ssl_key_password``, ``ssl_endpoint_identification_algorithm``.

Pass-through
    ``rdkafka.<key>=<value>`` sets librdkafka's ``<key>`` verbatim on every client;
    ``producer.<key>`` and ``consumer.<key>`` on producers or consumers only.
    They are applied last, so they override everything above.

Secrets (passwords, anything named like a secret) never appear in reprs or logs:
see :func:`factbus.urls.redact`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from factbus.errors import ConfigError
from factbus.urls import coerce, parse_enum, refuse_unknown

SCHEME = "kafka"

_SECURITY_OPTIONS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_ca_location",
    "ssl_certificate_location",
    "ssl_key_location",
    "ssl_key_password",
    "ssl_endpoint_identification_algorithm",
)
_PASSTHROUGH_PREFIXES = ("rdkafka.", "producer.", "consumer.")
_GROUP_PROTOCOLS = ("classic", "consumer")


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Everything a ``kafka://`` URL says (see the module docstring for each option)."""

    brokers: tuple[str, ...]
    partitions: int = 6
    replication_factor: int = 1
    publish_timeout: float = 30.0
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    commit_interval: float = 1.0
    join_timeout: float = 15.0
    poll_interval: float = 0.1
    fetch_wait: float = 0.1
    fetch_batch: int = 1000
    max_buffered: int = 10000
    prefetch_kbytes: int = 4096
    group_protocol: str = "classic"
    client_id: str = "factbus"
    request_timeout: float = 30.0
    reconnect_backoff_max: float = 1.0
    security: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """librdkafka security settings (keys with dots); may hold secrets."""
    rdkafka: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    producer: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    consumer: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.brokers:
            raise ConfigError("kafka:// URL names no broker (kafka://host:9092)")
        for name in (
            "partitions",
            "replication_factor",
            "fetch_batch",
            "max_buffered",
            "prefetch_kbytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"kafka option {name} must be at least 1")
        for name in (
            "publish_timeout",
            "session_timeout",
            "heartbeat_interval",
            "commit_interval",
            "join_timeout",
            "poll_interval",
            "fetch_wait",
            "request_timeout",
            "reconnect_backoff_max",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"kafka option {name} must be positive")
        if self.group_protocol not in _GROUP_PROTOCOLS:
            raise ConfigError(
                f"kafka option group_protocol must be one of {', '.join(_GROUP_PROTOCOLS)}"
            )

    @classmethod
    def from_url(cls, url: str) -> KafkaConfig:
        """Parse ``url``.

        :raises ConfigError: wrong scheme, no broker, unknown option or bad value.
        """
        parts = urlsplit(url)
        if parts.scheme != SCHEME:
            raise ConfigError(f"KafkaTransport needs a kafka:// URL, not {parts.scheme}://")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        brokers = tuple(h.strip() for h in hosts.split(",") if h.strip())
        values: dict[str, Any] = {"brokers": brokers}
        security: dict[str, str] = {}
        passthrough: dict[str, dict[str, str]] = {p: {} for p in _PASSTHROUGH_PREFIXES}
        if userinfo:
            user, has_password, password = userinfo.partition(":")
            security["sasl.username"] = unquote(user)
            if has_password:
                security["sasl.password"] = unquote(password)
        simple = {f.name: f for f in fields(cls)}
        for name in ("brokers", "security", "rdkafka", "producer", "consumer"):
            simple.pop(name)
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            prefix = next((p for p in _PASSTHROUGH_PREFIXES if name.startswith(p)), None)
            if prefix is not None and len(name) > len(prefix):
                passthrough[prefix][name[len(prefix) :]] = raw
            elif name in _SECURITY_OPTIONS:
                security[name.replace("_", ".")] = raw
            elif name in simple:
                values[name] = (
                    parse_enum(name, raw, _GROUP_PROTOCOLS, what="kafka option")
                    if name == "group_protocol"
                    else coerce(name, raw, simple[name].default, what="kafka option")
                )
            else:
                known = [*simple, *_SECURITY_OPTIONS, "rdkafka.<key>"]
                raise refuse_unknown(name, known, what="kafka")
        protocol = security.get("security.protocol", "plaintext").lower()
        if "sasl.username" in security and not protocol.startswith("sasl"):
            raise ConfigError(
                "kafka:// credentials need security_protocol=sasl_ssl or sasl_plaintext"
            )
        return cls(
            **values,
            security=tuple(security.items()),
            rdkafka=tuple(passthrough["rdkafka."].items()),
            producer=tuple(passthrough["producer."].items()),
            consumer=tuple(passthrough["consumer."].items()),
        )

    # -- librdkafka settings ------------------------------------------------------

    def common(self) -> dict[str, Any]:
        """Settings every client gets: brokers, client id, security."""
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.brokers),
            "client.id": self.client_id,
            "reconnect.backoff.max.ms": int(self.reconnect_backoff_max * 1000),
        }
        conf.update(self.security)
        return conf

    def admin(self) -> dict[str, Any]:
        conf = self.common()
        conf.update(self.rdkafka)
        return conf

    def producer_settings(self) -> dict[str, Any]:
        """An idempotent producer: ``acks=all``, ordered retries within ``publish_timeout``."""
        conf = self.common()
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": int(self.publish_timeout * 1000),
                # publish() awaits its whole batch: a longer linger delays every call's
                # last batches (the peak's publisher: 74k -> 45k msgs/s with 5 ms), a
                # shorter one costs small concurrent calls a produce request per
                # partition per millisecond; 2 ms kept the peak and cut the half-load
                # p99 (docs/decisions.md, "Kafka producer linger: 2 ms").
                "linger.ms": 2,
                # Topics are created explicitly (with `partitions`); a metadata refresh
                # must never re-create a deleted one with the broker's defaults.
                "allow.auto.create.topics": False,
            }
        )
        conf.update(self.rdkafka)
        conf.update(self.producer)
        return conf

    def consumer_settings(self, group: str) -> dict[str, Any]:
        """A group member that stores offsets only when the adapter says so."""
        conf = self.common()
        conf.update(
            {
                "group.id": group,
                "group.protocol": self.group_protocol,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": int(self.commit_interval * 1000),
                "enable.partition.eof": False,
                "fetch.wait.max.ms": int(self.fetch_wait * 1000),
                # Prefetch bounded by the subscription's own buffer (see max_buffered
                # and prefetch_kbytes), not librdkafka's defaults (hundreds of MB).
                "queued.min.messages": self.max_buffered,
                "queued.max.messages.kbytes": self.prefetch_kbytes,
                "fetch.max.bytes": self.prefetch_kbytes * 1024,
                # When that bounded queue is full, librdkafka's fetcher sleeps
                # fetch.queue.backoff.ms (default 1000) before it fetches again, so a
                # consumer faster than one queue per second idled: measured 23k msgs/s
                # draining a backlog, for factbus and the raw client alike, against
                # 230k+ with 1 ms (docs/decisions.md, "Kafka fetch back-off").
                "fetch.queue.backoff.ms": 1,
            }
        )
        if self.group_protocol == "classic":
            conf.update(
                {
                    "session.timeout.ms": int(self.session_timeout * 1000),
                    "heartbeat.interval.ms": int(self.heartbeat_interval * 1000),
                    "partition.assignment.strategy": "cooperative-sticky",
                }
            )
        conf.update(self.rdkafka)
        conf.update(self.consumer)
        return conf

    def reader_settings(self) -> dict[str, Any]:
        """A consumer that only reads assigned partitions and never commits."""
        conf = self.common()
        conf.update(
            {
                "group.id": "factbus-dead-letter-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            }
        )
        conf.update(self.rdkafka)
        conf.update(self.consumer)
        return conf
