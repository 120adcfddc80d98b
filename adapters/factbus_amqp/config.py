"""``amqp://`` and ``amqps://`` URLs: parsed into :class:`AmqpConfig`.

URL: ``amqp[s]://[user[:password]@]host[:port][/vhost][?option=value&...]``.
User, password and vhost are percent-decoded (``/%2F`` is the vhost ``/``; no
path or ``/`` alone is also ``/``). The port defaults to 5672, or 5671 for
``amqps://`` (TLS). Options (defaults in brackets):

Consuming
    ``prefetch`` [1000]
        ``basic.qos`` prefetch count of each subscription's channel: how many
        unacknowledged deliveries the broker pushes ahead of ``next_batch``.

History
    ``history`` [queue]
        ``queue``: each fan-out node consumes a classic queue of its own, which
        exists from its first subscription on (a node that starts later never
        sees earlier facts). ``stream``: each topic also keeps its facts in a
        RabbitMQ stream queue ``<topic>.stream`` (``x-queue-type: stream``,
        RabbitMQ >= 3.9) bound to the topic's exchange from its first declaration
        on; a fan-out bus reads it from the position kept in its own store
        (``x-stream-offset``), so a new node reads every fact from the first
        offset and a restarted one resumes exactly. Group mode still shares a
        classic queue (docs/adapters/amqp.md).

Publishing
    ``publish_timeout`` [30.0]
        Seconds one ``publish`` or ``dead_letter`` call may take in all, waiting for
        a lost connection to come back and for the broker's confirms included;
        then it raises ``PublishError``. ``subscribe`` and the dead-letter reads
        wait that long for a lost connection too, then raise ``TransportError``.
    ``unroutable`` [error]
        What a publish to a topic that no group has subscribed to yet does (the
        broker has no queue to put it in): ``error`` raises ``PublishError``
        (``mandatory`` publishes; nothing is stored), ``drop`` lets the broker
        discard it silently, like the memory transport does.

Connection
    ``heartbeat`` [10]
        AMQP heartbeat in whole seconds (0 disables): a silently dead connection
        is noticed within about three heartbeats.
    ``connect_timeout`` [10.0]
        Seconds one connection attempt may take; ``connect`` raises
        ``TransportError`` when the first attempt fails.
    ``reconnect_delay`` [0.5]
        Seconds before the first reconnection attempt after the connection is
        lost; doubled after each failed attempt, up to ``reconnect_max_delay``.
    ``reconnect_max_delay`` [5.0]
    ``name`` [factbus]
        Connection name shown by the broker (management UI, ``rabbitmqctl``).

TLS and SASL (``amqps://``)
    ``cafile``
        PEM file of the certificate authorities to trust (default: the system's).
    ``certfile``, ``keyfile``
        Client certificate and its private key (PEM), for mutual TLS.
    ``verify`` [true]
        ``false`` disables certificate and host name checks (tests only).
    ``auth`` [plain]
        SASL mechanism: ``plain`` (user and password) or ``external`` (the broker
        takes the identity from the client certificate).

An unknown option or a bad value raises ``ConfigError``. The password is kept
out of every repr and log line (:func:`factbus.urls.redact`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from factbus.errors import ConfigError
from factbus.urls import coerce, parse_enum, redact, refuse_unknown

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_UNROUTABLE = ("error", "drop")
_HISTORY = ("queue", "stream")
_AUTH = ("plain", "external")
_NOT_OPTIONS = {"host", "port", "username", "password", "vhost", "tls"}


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    """Everything an ``amqp://`` URL says (see the module docstring for each option)."""

    host: str = "localhost"
    port: int = 5672
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    tls: bool = False
    prefetch: int = 1000
    history: str = "queue"
    publish_timeout: float = 30.0
    unroutable: str = "error"
    heartbeat: int = 10
    connect_timeout: float = 10.0
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 5.0
    name: str = "factbus"
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    auth: str = "plain"

    def __post_init__(self) -> None:
        if self.prefetch < 1:
            raise ConfigError("amqp option prefetch must be at least 1")
        if self.heartbeat < 0:
            raise ConfigError("amqp option heartbeat must be 0 (off) or more seconds")
        for name in ("publish_timeout", "connect_timeout", "reconnect_delay"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"amqp option {name} must be positive")
        if self.reconnect_max_delay < self.reconnect_delay:
            raise ConfigError("amqp option reconnect_max_delay must be at least reconnect_delay")
        if self.unroutable not in _UNROUTABLE:
            raise ConfigError(f"amqp option unroutable must be one of {', '.join(_UNROUTABLE)}")
        if self.history not in _HISTORY:
            raise ConfigError(f"amqp option history must be one of {', '.join(_HISTORY)}")
        if self.auth not in _AUTH:
            raise ConfigError(f"amqp option auth must be one of {', '.join(_AUTH)}")
        if self.keyfile and not self.certfile:
            raise ConfigError("amqp option keyfile needs certfile")
        if not self.tls and (self.cafile or self.certfile or not self.verify):
            raise ConfigError("amqp TLS options (cafile, certfile, verify) need an amqps:// URL")

    @classmethod
    def from_url(cls, url: str) -> AmqpConfig:
        """Parse ``url``.

        :raises ConfigError: wrong scheme, unknown option or bad value.
        """
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ConfigError(
                f"AmqpTransport needs an amqp:// or amqps:// URL, not {parts.scheme}://"
            )
        try:
            port = parts.port
        except ValueError as error:
            raise ConfigError(f"amqp URL has a bad port: {error}") from None
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        values: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": port or _DEFAULT_PORTS[parts.scheme],
            "tls": parts.scheme == "amqps",
            "vhost": unquote(path) or "/",
        }
        if parts.username is not None:
            values["username"] = unquote(parts.username)
        if parts.password is not None:
            values["password"] = unquote(parts.password)
        defaults = cls()
        options = {f.name for f in fields(cls)} - _NOT_OPTIONS
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            if name not in options:
                raise refuse_unknown(name, options, what="amqp")
            values[name] = _coerce(name, raw, getattr(defaults, name))
        return cls(**values)

    def amqp_url(self) -> str:
        """The URL handed to aio-pika (it carries the password: never log it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        query = {"heartbeat": str(self.heartbeat), "name": self.name, "auth": self.auth}
        return (
            f"{'amqps' if self.tls else 'amqp'}://{quote(self.username, safe='')}:"
            f"{quote(self.password, safe='')}@{host}:{self.port}/{vhost}?{urlencode(query)}"
        )

    def display_url(self) -> str:
        """Where this config connects to, without the password (for logs and reprs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        scheme = "amqps" if self.tls else "amqp"
        user = quote(self.username, safe="")
        return redact(
            f"{scheme}://{user}:{quote(self.password, safe='')}@{host}:{self.port}/{vhost}"
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``amqps://`` (``None`` for plain ``amqp://``).

        :raises ConfigError: a certificate or key file cannot be read.
        """
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"amqp TLS files cannot be used: {error}") from error
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _coerce(name: str, raw: str, default: Any) -> Any:
    if name == "unroutable":
        return parse_enum(name, raw, _UNROUTABLE, what="amqp option")
    if name == "auth":
        return parse_enum(name, raw, _AUTH, what="amqp option")
    if name == "history":
        return parse_enum(name, raw, _HISTORY, what="amqp option")
    if name in ("cafile", "certfile", "keyfile"):
        return raw or None
    return coerce(name, raw, default, what="amqp option")
