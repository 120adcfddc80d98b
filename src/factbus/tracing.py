"""OpenTelemetry traces across brokers (the optional extra ``factbus[tracing]``).

On publish, a span ``publish <topic>`` (kind PRODUCER) is started and its W3C
trace context (``traceparent``, ``tracestate``) is injected into the broker
headers of every message of the call. On receive, the context is extracted
from the delivery's headers and each fact of it is handled inside a span
``handle <fact type>`` (kind CONSUMER), a child of the publisher's span and
linked to it, so one trace runs from the publishing process to the handler in
another process, over any transport that carries headers.

Attributes follow OpenTelemetry's messaging semantic conventions
(``messaging.system``, ``messaging.destination.name``,
``messaging.operation.type``/``.name``, ``messaging.message.id``,
``messaging.consumer.group.name``, ``messaging.batch.message_count``) plus
``factbus.fact.type`` and ``factbus.node``.

Only the OpenTelemetry *API* is used; the application installs an SDK and
exporter. The import is tried once, here: without ``opentelemetry-api``
:data:`AVAILABLE` is False and a bus never builds a :class:`Tracing`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from factbus.errors import ConfigError

AVAILABLE: bool
"""True when ``opentelemetry-api`` is importable."""
try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by installs without the extra
    AVAILABLE = False

TRACE_HEADERS = ("traceparent", "tracestate")


def provider_configured() -> bool:
    """True when the application installed a tracer provider (an SDK): only
    then does ``Bus(tracing=None)`` trace (the API's default records nothing)."""
    if not AVAILABLE:
        return False
    provider = trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def messaging_system(transport_url: str) -> str:
    """The semantic-convention ``messaging.system`` of a transport URL."""
    scheme = transport_url.partition("://")[0].lower()
    if scheme.startswith("kombu+"):
        scheme = scheme[len("kombu+") :]
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return "rabbitmq"
    return scheme or "memory"


class Tracing:
    """Spans for one bus (see the module docstring).

    :raises ConfigError: ``opentelemetry-api`` is not installed.
    """

    def __init__(self, *, transport_url: str, topic: str, node: str, group: str) -> None:
        if trace is None:
            raise ConfigError(
                "factbus tracing needs opentelemetry-api: pip install 'factbus[tracing]'"
            )
        from factbus.version import __version__

        self._tracer = trace.get_tracer("factbus", __version__)
        self.topic = topic
        self._base: dict[str, Any] = {
            "messaging.system": messaging_system(transport_url),
            "messaging.destination.name": topic,
            "factbus.node": node,
        }
        self._group = group

    @contextmanager
    def publishing(
        self, headers: MutableMapping[str, str], message_ids: list[str]
    ) -> Iterator[None]:
        """A ``publish <topic>`` span around the broker call; injects its context
        into ``headers`` (shared by the call's messages) before the body runs."""
        attributes = {
            **self._base,
            "messaging.operation.type": "publish",
            "messaging.operation.name": "publish",
        }
        if len(message_ids) == 1:
            attributes["messaging.message.id"] = message_ids[0]
        else:
            attributes["messaging.batch.message_count"] = len(message_ids)
        with self._tracer.start_as_current_span(
            f"publish {self.topic}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            propagate.inject(headers)
            yield

    @contextmanager
    def handling(
        self, fact_type: str, fact_hash: str, headers: Mapping[str, str] | None
    ) -> Iterator[None]:
        """A ``handle <fact type>`` span, child of (and linked to) the publisher's
        span whose context ``headers`` carry; a root span when they carry none.
        An exception escaping the body marks the span as an error."""
        parent = None
        links: list[Link] = []
        if headers is not None and "traceparent" in headers:
            parent = propagate.extract(headers)
            remote = trace.get_current_span(parent).get_span_context()
            if remote.is_valid:
                links.append(Link(remote))
        attributes = {
            **self._base,
            "messaging.operation.type": "process",
            "messaging.operation.name": "handle",
            "messaging.consumer.group.name": self._group,
            "messaging.message.id": fact_hash,
            "factbus.fact.type": fact_type,
        }
        with self._tracer.start_as_current_span(
            f"handle {fact_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=True,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as error:
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                raise
