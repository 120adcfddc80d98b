"""Deleting kombu queues and exchanges by name: what
:meth:`KombuTransport.remove <factbus_kombu.transport.KombuTransport.remove>` and
the bench's raw baseline use to leave nothing behind (blocking; run it in a
thread). Only the entities given are touched.

Each queue is declared (as the adapter declares it), purged, then deleted, on a
connection of its own: kombu's virtual transports (redis) unbind a queue only
from bindings their channel knows, and keep a queue's messages in keys a plain
delete leaves, so declaring first and purging make the delete complete there
(the binding set ``_kombu.binding.<exchange>`` goes with its last member); on
AMQP, declaring a queue that was already gone and deleting it again is harmless.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from factbus_kombu.config import KombuConfig


def delete(config: KombuConfig, queues: Sequence[Any], exchanges: Sequence[Any]) -> list[str]:
    """Delete the kombu ``Queue`` entities ``queues`` (with their messages and
    bindings), then the ``Exchange`` entities ``exchanges``, on the broker
    ``config`` names. Returns a line per entity not removed, naming it and the
    error (``[]``: all gone).

    :raises Exception: the broker cannot be reached (kombu's connection error).
    """
    problems: list[str] = []
    with config.connection() as connection:
        connection.ensure_connection(max_retries=3)
        for what, entities, remove in (
            ("queue", queues, _remove_queue),
            ("exchange", exchanges, _remove_exchange),
        ):
            for entity in entities:
                try:  # one channel per entity, as the AMQP adapter's removal
                    channel = connection.channel()
                    try:
                        remove(entity(channel))
                    finally:
                        with contextlib.suppress(Exception):
                            channel.close()
                except Exception as error:
                    problems.append(f"kombu {what} {entity.name!r}: {error}")
    return problems


def _remove_queue(bound: Any) -> None:
    """Declared first, so that the delete removes its bindings too, and purged, so
    that it removes its messages (see the module docstring)."""
    bound.declare()
    bound.purge()
    bound.delete()


def _remove_exchange(bound: Any) -> None:
    bound.delete()
