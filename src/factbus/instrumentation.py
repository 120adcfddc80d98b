"""The observer a bus installs when it has metrics or tracing (or both).

It remembers, for the facts of the step in progress, the headers of the
delivery that brought them (trace context, publish time). When a fact is
dispatched, tracing continues the publisher's trace from those headers; at
the end of the step the dispatcher's timings go into the handler-duration
histograms and each envelope's head fact handled in that step gets an
end-to-end latency sample. What it remembers is dropped at the end of each
step: a fact parked and released in a later step is handled in a trace of its
own and without an end-to-end sample.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence

from factbus.dispatcher import Dispatcher, DispatchTimings
from factbus.errors import EnvelopeError
from factbus.fact import Fact
from factbus.headers import HEADER_PUBLISHED_AT
from factbus.metrics import BusMetrics
from factbus.observer import PipelineObserver
from factbus.tracing import Tracing
from factbus.transport.base import Delivery


class Instrumentation(PipelineObserver):
    """Feeds :class:`~factbus.metrics.BusMetrics` and :class:`~factbus.tracing.Tracing`."""

    def __init__(
        self, dispatcher: Dispatcher, metrics: BusMetrics | None, tracing: Tracing | None
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self._dispatcher = dispatcher
        # Keyed by id(fact): the facts of a step stay alive (the pipeline holds
        # them) until step_done clears these, so ids are unique meanwhile.
        self._sent: dict[int, float] = {}
        """id(head fact) -> publish time of its envelope (metrics)."""
        self._headers: dict[int, Mapping[str, str]] = {}
        """id(fact) -> headers of its delivery, every fact (tracing)."""
        self._timings = DispatchTimings()
        self._last_raw: str | None = None
        self._last_sent: float | None = None

    def install(self) -> None:
        """Hook into the dispatcher: timings (metrics) and spans (tracing)."""
        if self.metrics is not None:
            self._dispatcher.timings = self._timings
        if self.tracing is not None:
            self._dispatcher.observe(self)

    def uninstall(self) -> None:
        self._dispatcher.timings = None
        self._dispatcher.observe(None)

    def received(self, delivery: Delivery, facts: Sequence[Fact]) -> None:
        headers = delivery.headers
        sent: float | None = None
        if self.metrics is not None:
            raw = headers.get(HEADER_PUBLISHED_AT)
            if raw is not None:
                # The messages of one publish call share their publish time, and
                # they mostly arrive together: parse each distinct value once.
                if raw == self._last_raw:
                    sent = self._last_sent
                else:
                    try:
                        sent = float(raw)
                    except ValueError:
                        sent = None
                    self._last_raw, self._last_sent = raw, sent
        if sent is not None and facts:
            self._sent[id(facts[-1])] = sent
        if self.tracing is not None:
            known = self._headers
            for fact in facts:
                known[id(fact)] = headers

    def rejected(self, delivery: Delivery, error: EnvelopeError) -> None:
        if self.metrics is not None:
            self.metrics.reject(error.code)

    async def dispatch(self, fact: Fact, work: Awaitable[None]) -> None:
        assert self.tracing is not None
        headers = self._headers.get(id(fact))
        with self.tracing.handling(fact.type, fact.hash, headers):
            await work

    def step_done(self, seconds: float) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.step_duration.observe(seconds)
            if self._timings.facts:
                self._fold(metrics)
        self._sent.clear()
        self._headers.clear()

    def _fold(self, metrics: BusMetrics) -> None:
        """Move the dispatcher's timings into the histograms (hot: once per fact)."""
        timings = self._timings
        facts = timings.facts
        spent_by_type: dict[str, list[float]] = {}
        last_type: str | None = None
        spent_list: list[float] = []
        for fact, spent in zip(facts, timings.seconds, strict=True):
            fact_type = fact.type
            if fact_type is not last_type:
                found = spent_by_type.get(fact_type)
                if found is None:
                    found = spent_by_type[fact_type] = []
                spent_list, last_type = found, fact_type
            spent_list.append(spent)
        for fact_type, values in spent_by_type.items():
            metrics.handler_histogram(fact_type).observe_all(values)
        sent = self._sent
        if sent:
            now = time.time()
            # A negative age (clock skew) lands in the first bucket.
            if timings.failed:
                failed = {id(f) for f in timings.failed}
                ages = [
                    now - at
                    for fact in facts
                    if id(fact) not in failed and (at := sent.get(id(fact))) is not None
                ]
            else:
                ages = [now - at for at in map(sent.get, map(id, facts)) if at is not None]
            if ages:
                metrics.end_to_end.observe_all(ages)
        timings.clear()
