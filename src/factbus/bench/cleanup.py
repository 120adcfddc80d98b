"""What a ``factbus bench`` run makes on its broker, and removing it when the run ends.

A run makes, all named after its own name (``bench-<8 hex digits>`` unless
:attr:`~factbus.bench.BenchConfig.name` says otherwise):

- the topic ``<name>`` with what factbus's transport makes for it (Kafka: the
  topic and its ``.dead-letter`` topic; AMQP and kombu: the topic's exchange,
  dead-letter queue and exchange, RabbitMQ stream queue) and the consuming
  node's group ``<name>-consumer`` (Kafka consumer group; AMQP and kombu queue
  ``<name>.<name>-consumer``);
- with the raw baseline, its destinations ``<name>-raw`` and ``<name>-raw-drain``
  with their queue or consumer group (``<destination>.raw``).

:func:`remove_made` removes exactly those, through the adapter's own code (the
transport's :meth:`~factbus.transport.RemovesTopics.remove` and the baseline's
``teardown``): nothing else on the broker is touched, whatever its name. The
runner calls it once the run is over, whether it succeeded, failed or was
cancelled (Ctrl-C), unless :attr:`~factbus.bench.BenchConfig.keep`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from factbus.bench.baseline import baseline_for
from factbus.bench.result import BenchResult
from factbus.errors import FactbusError
from factbus.transport import RemovesTopics, open_transport
from factbus.urls import redact

REMOVE_TIMEOUT_S = 120.0
"""How long removing what a run made may take before what is left is reported."""


@dataclass(slots=True)
class Made:
    """The names a bench run made (or may have made) on its broker."""

    transport: str
    """The run's transport URL."""
    topic: str
    groups: list[str]
    """The consuming node's groups on :attr:`topic`."""
    raw: list[str] = field(default_factory=list)
    """The raw baseline's destinations."""

    def names(self) -> list[str]:
        """Every name above (topic, groups, raw destinations), for a message."""
        return [self.topic, *self.groups, *self.raw]


class BenchCleanupError(FactbusError):
    """The run finished, but some of what it made on the broker could not be removed.
    :attr:`result` holds the run's figures, :attr:`left` a line per object left."""

    def __init__(self, result: BenchResult, left: list[str]) -> None:
        super().__init__(
            f"{len(left)} broker object(s) the bench made could not be removed "
            "(remove them by hand):\n  " + "\n  ".join(left)
        )
        self.result = result
        self.left = left


async def remove_made(made: Made, timeout: float = REMOVE_TIMEOUT_S) -> list[str]:
    """Remove from the broker what ``made`` names (see the module docstring).
    Never raises (but for a cancellation): returns a line per object that could not
    be removed, or that could not be asked about (``[]``: everything is gone)."""
    left: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            for destination in made.raw:
                left += await baseline_for(made.transport, destination).teardown()
            transport = open_transport(made.transport)
            try:
                if isinstance(transport, RemovesTopics):
                    left += await transport.remove(made.topic, made.groups)
                else:
                    left.append(
                        f"{type(transport).__name__} cannot remove topics: "
                        f"{made.topic!r} and groups {made.groups} are left"
                    )
            finally:
                await transport.aclose()
    except TimeoutError:
        left.append(f"removing {made.names()} took longer than {timeout:g}s; some may be left")
    except Exception as error:
        left.append(f"removing {made.names()} on {redact(made.transport)} failed: {error}")
    return left


async def timed_remove(made: Made) -> tuple[list[str], float]:
    """:func:`remove_made` and the seconds it took."""
    start = time.perf_counter()
    left = await remove_made(made)
    return left, time.perf_counter() - start


__all__ = ["BenchCleanupError", "Made", "remove_made", "timed_remove"]
