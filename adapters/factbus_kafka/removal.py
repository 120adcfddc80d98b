"""Deleting Kafka topics and consumer groups by name: what
:meth:`KafkaTransport.remove <factbus_kafka.transport.KafkaTransport.remove>` and
the bench's raw baseline use to leave nothing behind.

A module of its own (not part of the producer or the subscription): blocking
admin calls, run in a thread by the caller. Only the names given are touched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from factbus_kafka._driver import KafkaError, KafkaException

GROUP_RETRY_S = 15.0
"""How long a group that still has members (a consumer that has just closed, whose
leave the coordinator has not processed yet) is asked again before it is reported."""


def _code(error: BaseException) -> object:
    if isinstance(error, KafkaException) and error.args:
        return getattr(error.args[0], "code", lambda: None)()
    return None


def delete(
    admin: Any, topics: Sequence[str], groups: Sequence[str], timeout: float = 30.0
) -> list[str]:
    """Delete ``topics`` and consumer ``groups`` with the AdminClient ``admin``
    (blocking). A topic or group that does not exist is no error; a group that
    still has members is asked again for up to :data:`GROUP_RETRY_S`. Returns a
    line per object not removed, naming it and the broker's reason (``[]``: all gone).
    """
    problems: list[str] = []
    if topics:
        futures = admin.delete_topics(list(topics), operation_timeout=timeout)
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout)
            except Exception as error:
                if _code(error) != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    problems.append(f"kafka topic {topic!r}: {error}")
    left = list(groups)
    deadline = time.monotonic() + GROUP_RETRY_S
    while left:
        busy: list[str] = []
        futures = admin.delete_consumer_groups(left, request_timeout=timeout)
        for group, future in futures.items():
            try:
                future.result(timeout=timeout)
            except Exception as error:
                code = _code(error)
                if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline:
                    busy.append(group)
                elif code == KafkaError.NON_EMPTY_GROUP:
                    problems.append(f"kafka group {group!r}: it still has members")
                elif code != KafkaError.GROUP_ID_NOT_FOUND:
                    problems.append(f"kafka group {group!r}: {error}")
        left = busy
        if left:
            time.sleep(0.5)
    return problems
