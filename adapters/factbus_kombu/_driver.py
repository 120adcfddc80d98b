"""The kombu driver, imported in one place so that a missing install says exactly
what to ``pip install`` (:class:`~factbus.errors.MissingDriver`).

kombu's own annotations are partial; the adapter treats kombu objects as ``Any``
at this boundary and states its contracts in its own types.
"""

from __future__ import annotations

import importlib
from typing import Any

from factbus.errors import MissingDriver

try:
    _kombu: Any = importlib.import_module("kombu")
    _connection: Any = importlib.import_module("kombu.connection")
    _exceptions: Any = importlib.import_module("kombu.exceptions")
    _virtual: Any = importlib.import_module("kombu.transport.virtual")
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDriver("kombu", "kombu", exc) from exc

Connection: Any = _kombu.Connection
Consumer: Any = _kombu.Consumer
Exchange: Any = _kombu.Exchange
Queue: Any = _kombu.Queue
get_transport_cls: Any = _connection.get_transport_cls
VirtualTransport: type[Any] = _virtual.Transport
VirtualQoS: Any = _virtual.QoS
OperationalError: type[Exception] = _exceptions.OperationalError


def require_redis() -> None:
    """kombu imports redis-py only when a redis channel opens; fail early instead.

    :raises MissingDriver: redis-py is not installed.
    """
    try:
        importlib.import_module("redis")
    except ImportError as exc:
        raise MissingDriver("kombu+redis", "kombu", exc) from exc


__all__ = [
    "Connection",
    "Consumer",
    "Exchange",
    "OperationalError",
    "Queue",
    "VirtualQoS",
    "VirtualTransport",
    "get_transport_cls",
    "require_redis",
]
