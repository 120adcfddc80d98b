"""The pipeline's observation hook: what metrics and tracing see of each step.

The pipeline and the dispatcher hold an optional :class:`PipelineObserver`
(``None`` by default). With none, they pay one ``is None`` test per delivery
and per dispatched fact, nothing else; :mod:`factbus.metrics` and
:mod:`factbus.tracing` are only imported when a bus is built with them.

Contract for implementations: every method is called on the event-loop thread
of the bus, must be quick (no I/O, no await other than ``work``) and must not
raise; an observer does not change what the pipeline does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from factbus.errors import EnvelopeError
from factbus.fact import Fact
from factbus.transport.base import Delivery


class PipelineObserver:
    """A no-op observer; subclasses override what they want to see."""

    def received(self, delivery: Delivery, facts: Sequence[Fact]) -> None:
        """``delivery`` decoded into ``facts`` (topological order, head last)."""

    def rejected(self, delivery: Delivery, error: EnvelopeError) -> None:
        """``delivery`` is dead-lettered because of ``error`` (``error.code`` is stable)."""

    async def dispatch(self, fact: Fact, work: Awaitable[None]) -> None:
        """Run ``work`` (every handler of ``fact``, with retries); await it exactly once.

        Only called when installed with ``Dispatcher.observe`` (tracing);
        handler timings for metrics come cheaper, from ``Dispatcher.timings``.
        Exceptions of ``work`` (:class:`~factbus.HandlerFailed`) must propagate.
        """
        await work

    def step_done(self, seconds: float) -> None:
        """A pipeline step settled and acked its deliveries in ``seconds``."""
