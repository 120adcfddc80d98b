"""``kombu+<transport>://``: factbus over any kombu transport (redis, RabbitMQ, ...).

``kombu+redis://127.0.0.1:6379/0``, ``kombu+amqp://user:pass@host:5672/vhost``:
the adapter strips ``kombu+`` and gives the rest to :class:`kombu.Connection`.
URL options are listed in :mod:`factbus_kombu.config`.

Topology (per topic ``T``):

- exchange ``T``, type ``topic``, durable (kombu's ``fanout`` on redis is
  PUB/SUB and loses messages nobody listens for, so ``topic`` it is);
- queue ``T.<group>`` per group, durable, bound with ``#``: fan-out mode is a
  queue per node, group mode one queue shared by the group's workers;
- queue ``T.dead-letter``, durable. On RabbitMQ it is bound to a fanout exchange
  of the same name, and group queues dead-letter into it natively
  (``x-dead-letter-exchange``): the topology of the ``amqp://`` adapter, so both
  can share a broker. On virtual transports it is written through the default
  exchange.

Messages are persistent (delivery mode 2), carry the message id and headers,
and are sent as ``application/octet-stream`` with encoding ``binary`` so that
neither kombu nor the client library re-encodes the body.

Threads: kombu is synchronous and its connections are not thread-safe. Publishing
and dead-letter calls run on one worker thread that owns the publishing
connection (one executor call per ``publish``, whatever the batch size); each
subscription has its own thread and connection (:mod:`factbus_kombu.consumer`).
Connecting and reconnecting happen in one place, :mod:`factbus_kombu.link`.

A missing kombu raises :class:`~factbus.errors.MissingDriver` on import.
"""

from __future__ import annotations

from factbus_kombu import _driver  # noqa: F401  (fails first, with the install hint)
from factbus_kombu.config import KombuConfig
from factbus_kombu.transport import KombuTransport

__all__ = ["KombuConfig", "KombuTransport"]
