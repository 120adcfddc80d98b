"""Deleting Kafka topics and consumer groups by name: what
:meth:`KafkaTransport.remove <factbus_kafka.transport.KafkaTransport.remove>`,
the bench's raw baseline and the test suite's sweep (through the entry-point
group ``factbus.removals``: :data:`factbus.testing.sweep.REMOVALS`) use to leave
nothing behind.

A module of its own (not part of the producer or the subscription): blocking
admin calls, run in a thread by the caller. Only the names given are touched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from factbus_kafka._driver import KafkaError, KafkaException

GROUP_RETRY_S = 15.0
"""How long a group that still has members (a consumer that has just closed, whose
leave the coordinator has not processed yet) is asked again before it is reported."""


@dataclass
class Deleted:
    """What :func:`delete` did, a line per object: removed, failed (with the
    broker's reason), and groups left because they still had members."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)

    @property
    def left(self) -> list[str]:
        """Every object not removed (failed or busy)."""
        return [*self.failed, *self.busy]


def _code(error: BaseException) -> object:
    if isinstance(error, KafkaException) and error.args:
        return getattr(error.args[0], "code", lambda: None)()
    return None


def delete(
    admin: Any,
    topics: Sequence[str],
    groups: Sequence[str],
    timeout: float = 30.0,
    group_retry: float = GROUP_RETRY_S,
) -> Deleted:
    """Delete ``topics`` and consumer ``groups`` with the AdminClient ``admin``
    (blocking). A topic or group that does not exist is neither removed nor an
    error; a group that still has members is asked again for up to ``group_retry``
    seconds, then reported in :attr:`Deleted.busy`."""
    done = Deleted()
    if topics:
        futures = admin.delete_topics(list(topics), operation_timeout=timeout)
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout)
                done.removed.append(f"kafka topic {topic!r}")
            except Exception as error:
                if _code(error) != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    done.failed.append(f"kafka topic {topic!r}: {error}")
    left = list(groups)
    deadline = time.monotonic() + group_retry
    while left:
        busy: list[str] = []
        futures = admin.delete_consumer_groups(left, request_timeout=timeout)
        for group, future in futures.items():
            try:
                future.result(timeout=timeout)
                done.removed.append(f"kafka group {group!r}")
            except Exception as error:
                code = _code(error)
                if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline:
                    busy.append(group)
                elif code == KafkaError.NON_EMPTY_GROUP:
                    done.busy.append(f"kafka group {group!r}: still has members")
                elif code != KafkaError.GROUP_ID_NOT_FOUND:
                    done.failed.append(f"kafka group {group!r}: {error}")
        left = busy
        if left:
            time.sleep(0.5)
    return done
