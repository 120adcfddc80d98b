"""The broker headers factbus writes (never hashed), and the dead-letter message.

Every header name lives here, so adapters, the pipeline and the commands agree
on them; every transport builds a dead letter's headers with
:func:`dead_letter_headers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "DEAD_LETTER_PREFIX",
    "HEADER_DEAD_LETTER_REASON",
    "HEADER_DEAD_LETTER_TOPIC",
    "HEADER_MESSAGE_ID",
    "HEADER_PRODUCER",
    "HEADER_PUBLISHED_AT",
    "HEADER_REPLAYED_REASON",
    "dead_letter_headers",
    "dead_letter_reason",
]

HEADER_PRODUCER: Final = "x-factbus-producer"
"""The publishing node's name."""
HEADER_PUBLISHED_AT: Final = "x-factbus-published-at"
"""Unix time of the publish, in seconds with six decimals."""
HEADER_MESSAGE_ID: Final = "x-factbus-message-id"
"""``Message.message_id`` where the broker has no message id of its own (Kafka)."""
DEAD_LETTER_PREFIX: Final = "x-factbus-dead-letter-"
"""Every header a dead letter gains starts with this (``factbus dlq replay`` drops them)."""
HEADER_DEAD_LETTER_REASON: Final = DEAD_LETTER_PREFIX + "reason"
"""Why the message was dead-lettered: ``code: message`` (README, "Dead letters")."""
HEADER_DEAD_LETTER_TOPIC: Final = DEAD_LETTER_PREFIX + "topic"
"""The topic the message was dead-lettered from."""
HEADER_REPLAYED_REASON: Final = "x-factbus-replayed-reason"
"""On a message replayed from the dead letters: the reason it had been dead-lettered."""


def dead_letter_headers(headers: Mapping[str, str], topic: str, reason: str) -> dict[str, str]:
    """The headers of ``topic``'s dead letter of a message with ``headers``:
    the message's own, plus the reason and the topic."""
    return {**headers, HEADER_DEAD_LETTER_REASON: reason, HEADER_DEAD_LETTER_TOPIC: topic}


def dead_letter_reason(headers: Mapping[str, str]) -> str:
    """The reason a dead letter carries (``unknown`` when it carries none)."""
    return headers.get(HEADER_DEAD_LETTER_REASON, "unknown")
