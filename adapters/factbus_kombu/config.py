"""``kombu+<transport>://`` URLs: parsed into :class:`KombuConfig`.

URL: ``kombu+<transport>://<what kombu reads>[?option=value&...]``. The adapter
strips ``kombu+`` and hands the rest to :class:`kombu.Connection`, e.g.
``kombu+redis://127.0.0.1:6379/0`` or ``kombu+amqp://user:pass@host:5672/vhost``.
``kombu+amqp`` always means py-amqp (kombu's ``pyamqp``), never librabbitmq,
because batched publisher confirms need py-amqp.

The query string mixes three kinds of keys, told apart by their names so that
they never collide:

Adapter options (prefix ``factbus_``; defaults in brackets)
    ``factbus_prefetch`` [1024]
        Unacknowledged deliveries one subscription may hold (``basic.qos`` on
        AMQP, kombu's QoS emulation elsewhere). Bounds memory per subscription.
    ``factbus_poll_interval`` [0.02]
        Seconds the consumer thread waits for a message before it applies the
        acks and nacks queued by the event loop: bounds how late an ack reaches
        the broker when no message arrives, and how soon ``aclose`` is noticed.
    ``factbus_confirm_timeout`` [30.0]
        Seconds ``publish`` waits for the broker's publisher confirms (py-amqp)
        before it raises ``PublishError``.
    ``factbus_retry_timeout`` [30.0]
        Seconds ``connect``, ``publish`` and the dead-letter calls keep
        reconnecting after connection errors before they raise. A consumer keeps
        reconnecting for as long as its subscription is open; once it has been
        down this long, ``next_batch`` raises ``TransportError`` until it is back.

kombu transport options (prefix ``transport.``)
    ``transport.<name>=<value>`` sets ``transport_options[<name>]`` of the kombu
    connection; the value is read as JSON when it parses (numbers, ``true``,
    objects), else kept as a string: ``transport.visibility_timeout=600``,
    ``transport.global_keyprefix=app:``, ``transport.health_check_interval=10``.
    ``transport.confirm_publish`` is refused: confirms are always on (batched);
    so is ``transport.ack_emulation=false`` on redis (a consumer that dies would
    lose what it took).
    On redis the adapter sets ``visibility_timeout=300`` and
    ``unacked_key``/``unacked_index_key``/``unacked_mutex_key`` under
    ``factbus.`` unless given (see :data:`REDIS_TRANSPORT_DEFAULTS`).

kombu connection keys (passed through as kombu reads them)
    ``heartbeat`` (seconds; AMQP heartbeats, checked by the consumer threads),
    ``connect_timeout`` (seconds), ``login_method`` (SASL mechanism on AMQP:
    ``PLAIN``, ``AMQPLAIN``, ``EXTERNAL``, ``GSSAPI``).

TLS
    Use the secure scheme: ``kombu+amqps://`` (port 5671) or ``kombu+rediss://``.
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
    (``required``, ``optional``, ``none``) work on both: on AMQP the adapter maps
    them onto py-amqp's ``ssl`` dict (``ca_certs``, ``certfile``, ...; also
    ``ssl_server_hostname``, ``ssl_ciphers``), on redis kombu passes them to
    redis-py (also ``ssl_check_hostname``). ``ssl=true`` turns TLS on for AMQP
    (same as ``amqps``); for redis write ``rediss://``.

Any other key is refused with :class:`~factbus.errors.ConfigError` (kombu would
fail later with a less helpful ``TypeError``), except on transports that parse
their own URLs (sqlalchemy, mongodb, ...), which get the rest verbatim.

Credentials (the URL's password, values of keys named like a secret) never
appear in reprs or logs: see :func:`factbus.urls.redact`.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from factbus.errors import ConfigError
from factbus.transport.base import Capabilities
from factbus.urls import parse_bool, parse_duration, parse_int, redact, refuse_unknown
from factbus_kombu._driver import (
    Connection,
    VirtualTransport,
    get_transport_cls,
    require_redis,
)

SCHEME_PREFIX: Final = "kombu+"
OPTION_PREFIX: Final = "factbus_"
TRANSPORT_OPTION_PREFIX: Final = "transport."

# Keyword arguments of kombu.Connection the URL may set, with their types (kombu
# would pass the URL's strings on unconverted).
_KOMBU_KEYS: Final = {
    "heartbeat": float,
    "connect_timeout": float,
    "login_method": str,
}
_AMQP_SCHEMES: Final = frozenset({"amqp", "amqps", "pyamqp"})
# ssl_<key> in the URL -> key of py-amqp's ssl dict.
_AMQP_SSL_KEYS: Final = {
    "ssl_ca_certs": "ca_certs",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_cert_reqs": "cert_reqs",
    "ssl_server_hostname": "server_hostname",
    "ssl_ciphers": "ciphers",
}
_CERT_REQS: Final = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_required": ssl.CERT_REQUIRED,
    "cert_optional": ssl.CERT_OPTIONAL,
    "cert_none": ssl.CERT_NONE,
}

REDIS_TRANSPORT_DEFAULTS: Final = {
    "visibility_timeout": 300,
    "unacked_key": "factbus.unacked",
    "unacked_index_key": "factbus.unacked_index",
    "unacked_mutex_key": "factbus.unacked_mutex",
    "unacked_mutex_expire": 30,
}
"""kombu redis options the adapter sets unless the URL does: a message whose
consumer died without acking (kill -9) comes back after 5 minutes, not kombu's
hour (a copy too many is harmless: facts are deduplicated); the mutex that one
restoring consumer holds expires after 30 s, not kombu's 5 minutes, so that a
consumer killed while restoring does not stop every restore for that long
(two restorers are safe: each message is restored in a WATCH transaction, so
only once); and factbus' unacked
bookkeeping lives under keys of its own, so that this shorter timeout never
touches another kombu application's (Celery's) unacked messages in the same
database."""

AMQP_CAPABILITIES: Final = Capabilities(
    persistent=True,
    ordered=True,
    consumer_groups=True,
    replays_history=False,
    redelivers_nacked=True,
    survives_broker_restart=True,
    native_dead_letter=False,
)
"""RabbitMQ through py-amqp: durable queues, persistent messages, publisher
confirms; a queue exists only from a group's first subscription on."""

REDIS_CAPABILITIES: Final = Capabilities(
    persistent=False,
    ordered=True,
    consumer_groups=True,
    replays_history=False,
    redelivers_nacked=True,
    survives_broker_restart=False,
    native_dead_letter=False,
)
"""Redis through kombu's virtual AMQP: a publish returns once the LPUSH is in
redis' memory, not on disk, and a restart of a redis without persistence loses
queues, bindings and messages. Clients do reconnect and re-declare by
themselves, but what the broker lost is lost, so neither ``persistent`` nor
``survives_broker_restart`` (as the conformance suite checks it: nothing lost
across a restart) is declared."""

GENERIC_CAPABILITIES: Final = Capabilities(
    persistent=False,
    ordered=False,
    consumer_groups=True,
    replays_history=False,
    redelivers_nacked=True,
    survives_broker_restart=False,
    native_dead_letter=False,
)
"""Any other kombu transport: only what the adapter itself guarantees."""


@dataclass(frozen=True, slots=True)
class KombuConfig:
    """What a ``kombu+...`` URL says, split into kombu's part and the adapter's."""

    url: str
    """The URL as given (may hold a password: never log it, see :func:`factbus.urls.redact`)."""
    kombu_url: str
    """What :class:`kombu.Connection` gets: the URL without ``kombu+`` and without
    the adapter's keys."""
    transport: str
    """kombu's transport alias (``pyamqp``, ``redis``, ``sqs``, ...)."""
    driver_type: str
    """kombu's name for the client library family: ``amqp``, ``redis``, ..."""
    is_virtual: bool
    """True for kombu's emulated AMQP (redis, SQS, ...): no native requeue,
    confirms or multiple acks; the adapter emulates what it needs."""
    prefetch: int = 1024
    poll_interval: float = 0.02
    confirm_timeout: float = 30.0
    retry_timeout: float = 30.0
    transport_options: dict[str, Any] = field(default_factory=dict)
    ssl: dict[str, Any] | bool | None = None
    """TLS settings for kombu (``None``: whatever the scheme and kombu decide)."""
    connection_options: dict[str, Any] = field(default_factory=dict)
    """Other keyword arguments of :class:`kombu.Connection` (``heartbeat``, ...)."""

    @classmethod
    def from_url(cls, url: str) -> KombuConfig:
        """Parse ``url``.

        :raises ConfigError: not a ``kombu+`` URL, an unknown key, or a bad value.
        :raises MissingDriver: the transport's client library is not installed.
        """
        parts = urlsplit(url)
        if not parts.scheme.startswith(SCHEME_PREFIX) or parts.scheme == SCHEME_PREFIX:
            raise ConfigError(
                f"KombuTransport needs a kombu+<transport>:// URL "
                f"(e.g. kombu+redis://127.0.0.1:6379/0), not {redact(url)!r}"
            )
        scheme = parts.scheme[len(SCHEME_PREFIX) :]
        transport = "pyamqp" if scheme == "amqp" else scheme
        try:
            transport_cls = get_transport_cls(transport)
        except (KeyError, ImportError, ValueError) as exc:
            raise ConfigError(f"kombu has no transport {scheme!r}: {exc}") from exc
        driver_type = str(getattr(transport_cls, "driver_type", transport))
        if driver_type == "redis":
            require_redis()
        amqp = scheme in _AMQP_SCHEMES

        options: dict[str, str] = {}
        transport_options: dict[str, Any] = {}
        ssl_options: dict[str, Any] = {}
        ssl_flag: bool | None = None
        kept: list[tuple[str, str]] = []
        connection_options: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.startswith(OPTION_PREFIX):
                options[key[len(OPTION_PREFIX) :]] = value
            elif key.startswith(TRANSPORT_OPTION_PREFIX):
                name = key[len(TRANSPORT_OPTION_PREFIX) :]
                if not name:
                    raise ConfigError("empty kombu transport option name in 'transport.='")
                if name == "confirm_publish":
                    raise ConfigError(
                        "transport.confirm_publish: the adapter always uses publisher "
                        "confirms, batched per publish call"
                    )
                transport_options[name] = _json_or_text(value)
            elif amqp and key == "ssl":
                ssl_flag = parse_bool(key, value)
            elif amqp and key.startswith("ssl_"):
                if key not in _AMQP_SSL_KEYS:
                    raise ConfigError(
                        f"unknown TLS option {key!r} for AMQP (known: {', '.join(_AMQP_SSL_KEYS)})"
                    )
                ssl_options[_AMQP_SSL_KEYS[key]] = (
                    _cert_reqs(value) if key == "ssl_cert_reqs" else value
                )
            elif key == "ssl":
                raise ConfigError(f"ssl={value}: use the secure scheme (kombu+rediss://)")
            elif key in _KOMBU_KEYS:
                connection_options[key] = _convert(key, value, _KOMBU_KEYS[key])
            elif key.startswith("ssl_") or getattr(transport_cls, "can_parse_url", False):
                kept.append((key, value))
            else:
                raise ConfigError(
                    f"unknown URL option {key!r}: adapter options are written "
                    f"factbus_<name>, kombu transport options transport.<name>, "
                    f"kombu connection keys are {', '.join(sorted(_KOMBU_KEYS))}"
                )

        tls: dict[str, Any] | bool | None = None
        if ssl_options:
            tls = ssl_options
        elif ssl_flag is not None:
            tls = ssl_flag
        kombu_scheme = "pyamqp" if scheme == "amqp" else scheme
        kombu_url = urlunsplit(
            (kombu_scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment)
        )
        if driver_type == "redis":
            if not transport_options.get("ack_emulation", True):
                raise ConfigError(
                    f"transport.ack_emulation={transport_options['ack_emulation']}: without "
                    "kombu's ack emulation redis forgets a message as soon as a consumer "
                    "takes it, so a consumer that dies before acking (kill -9) loses it; "
                    "leave the option out (on by default)"
                )
            transport_options = {**REDIS_TRANSPORT_DEFAULTS, **transport_options}
        values = _typed_options(options)
        return cls(
            url=url,
            kombu_url=kombu_url,
            transport=transport,
            driver_type=driver_type,
            is_virtual=issubclass(transport_cls, VirtualTransport),
            transport_options=transport_options,
            ssl=tls,
            connection_options=connection_options,
            **values,
        )

    def __repr__(self) -> str:
        # Not the dataclass repr: url, kombu_url and transport options may hold secrets.
        return (
            f"KombuConfig({redact(self.url)!r}, transport={self.transport!r}, "
            f"prefetch={self.prefetch}, poll_interval={self.poll_interval}, "
            f"confirm_timeout={self.confirm_timeout}, retry_timeout={self.retry_timeout})"
        )

    @property
    def capabilities(self) -> Capabilities:
        """What this URL's transport guarantees (see the module constants)."""
        if self.transport in ("pyamqp", "amqps"):
            return AMQP_CAPABILITIES
        if self.driver_type == "redis":
            return REDIS_CAPABILITIES
        return GENERIC_CAPABILITIES

    def connection(self) -> Any:
        """A new, unconnected :class:`kombu.Connection`."""
        kwargs: dict[str, Any] = {
            **self.connection_options,
            "transport_options": dict(self.transport_options),
        }
        if self.ssl is not None:
            kwargs["ssl"] = self.ssl
        if self.driver_type == "redis":
            # kombu's redis transport (or its Sentinel one), with a take that cannot
            # lose a message.
            from factbus_kombu import redis_channel

            kwargs["transport"] = (
                redis_channel.SentinelTransport
                if self.transport == "sentinel"
                else redis_channel.Transport
            )
            if self.transport == "rediss" and not kwargs.get("ssl"):
                # What kombu does for a rediss:// URL without TLS options (it only
                # recognises the scheme by name, which a transport class hides).
                kwargs["ssl"] = {"ssl_cert_reqs": ssl.CERT_NONE}
        return Connection(self.kombu_url, **kwargs)


def _typed_options(raw: dict[str, str]) -> dict[str, Any]:
    known = {f.name: f for f in fields(KombuConfig)}
    allowed = ("prefetch", "poll_interval", "confirm_timeout", "retry_timeout")
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if name not in allowed:
            raise refuse_unknown(
                OPTION_PREFIX + name, [OPTION_PREFIX + a for a in allowed], what="kombu"
            )
        label = OPTION_PREFIX + name
        value: float = (
            parse_int(label, text)
            if known[name].type in ("int", int)
            else parse_duration(label, text)
        )
        if value <= 0 or (name == "prefetch" and value > 65535):
            raise ConfigError(f"{OPTION_PREFIX}{name}={text!r} is out of range")
        values[name] = value
    return values


def _convert(key: str, value: str, kind: type[Any]) -> Any:
    if kind is str:
        return value
    seconds = parse_duration(key, value)
    if seconds < 0:
        raise ConfigError(f"{key}={value!r} must not be negative")
    return seconds


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _cert_reqs(value: str) -> ssl.VerifyMode:
    try:
        return _CERT_REQS[value.lower()]
    except KeyError:
        raise ConfigError(f"ssl_cert_reqs={value!r}: use required, optional or none") from None
