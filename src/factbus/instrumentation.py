"""The observer a bus installs when it has metrics or tracing (or both).

It remembers, for the facts of the step in progress, the headers of the
delivery that brought them (trace context, publish time), so that when a fact
is dispatched its handler span continues the publisher's trace and its
end-to-end latency can be measured. What it remembers is dropped at the end of
each step: a fact parked and released in a later step is handled in a trace
of its own and without an end-to-end latency sample.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence

from factbus.errors import EnvelopeError
from factbus.fact import Fact, FactRef
from factbus.metrics import BusMetrics, published_at
from factbus.observer import PipelineObserver
from factbus.tracing import Tracing
from factbus.transport.base import Delivery


class Instrumentation(PipelineObserver):
    """Feeds :class:`~factbus.metrics.BusMetrics` and :class:`~factbus.tracing.Tracing`."""

    def __init__(self, metrics: BusMetrics | None, tracing: Tracing | None) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self._pending: dict[FactRef, tuple[Mapping[str, str], float | None]] = {}

    def received(self, delivery: Delivery, facts: Sequence[Fact]) -> None:
        headers = delivery.headers
        entry = (headers, published_at(headers) if self.metrics is not None else None)
        pending = self._pending
        for fact in facts:
            pending[fact.ref] = entry

    def rejected(self, delivery: Delivery, error: EnvelopeError) -> None:
        if self.metrics is not None:
            self.metrics.rejected(error.code)

    async def dispatch(self, fact: Fact, work: Awaitable[None]) -> None:
        entry = self._pending.pop(fact.ref, None)
        if self.tracing is not None:
            with self.tracing.handling(fact.type, fact.hash, entry[0] if entry else None):
                await self._timed(fact, work, entry)
        else:
            await self._timed(fact, work, entry)

    async def _timed(
        self,
        fact: Fact,
        work: Awaitable[None],
        entry: tuple[Mapping[str, str], float | None] | None,
    ) -> None:
        metrics = self.metrics
        if metrics is None:
            await work
            return
        start = time.perf_counter()
        try:
            await work
        finally:
            metrics.handled(fact, time.perf_counter() - start)
        if entry is not None and entry[1] is not None:
            metrics.latency(time.time() - entry[1])

    def step_done(self, seconds: float) -> None:
        self._pending.clear()
        if self.metrics is not None:
            self.metrics.step(seconds)
