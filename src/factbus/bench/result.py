"""A benchmark's figures, as a dataclass and as JSON.

Rates are per second of wall time. ``facts_per_s`` counts distinct facts
handled end to end (first publish to last handled); ``messages_per_s`` counts
the messages that moved in that time (duplicates included), which is what the
baseline moves, so ``ratio = messages_per_s / baseline_per_s`` compares equal
work. Latencies are publish call start to handler call, per distinct fact,
from its first publish.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of publish -> handled, in milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        """Nearest-rank percentiles of ``seconds`` (empty: all zero)."""
        if not seconds:
            return cls(0.0, 0.0, 0.0, 0.0, 0)
        ordered = sorted(seconds)

        def rank(p: float) -> float:
            index = max(0, math.ceil(p / 100 * len(ordered)) - 1)
            return round(ordered[index] * 1000, 3)

        return cls(rank(50), rank(95), rank(99), round(ordered[-1] * 1000, 3), len(ordered))


def latencies(published: Sequence[float], handled: Sequence[float]) -> list[float]:
    """Handled minus first-published time of each fact that has both stamps."""
    return [h - p for p, h in zip(published, handled, strict=True) if p > 0 and h > 0]


@dataclass(frozen=True, slots=True)
class HalfLoad:
    """The run at half of the peak rate: publishing paced at ``target_per_s``."""

    target_per_s: float
    achieved_per_s: float
    latency_ms: Latency
    publish_lag_p99_ms: float = 0.0
    """How far behind its schedule the publishers made their calls (p99 over
    messages, ms): a publisher starved of CPU shows here and in ``achieved_per_s``,
    not in the latency, which starts at the call."""
    cpu_us_per_msg: float | None = None
    """CPU time of the consuming process per message over this phase."""
    publisher_cpu_us_per_msg: float | None = None
    """CPU time of the publisher processes per message over this phase, one call
    per message or a few (``None`` when the publishers are tasks of the
    consuming process, as on ``memory://``)."""


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Everything one ``factbus bench`` run measured (see the module docstring)."""

    transport: str
    """The transport URL, password redacted."""
    store: str
    client: str
    """The baseline's raw client."""
    facts: int
    messages: int
    payload: int
    body_bytes: int
    """Average envelope body size."""
    shape: str
    duplicates: float
    reorder: bool
    publishers: int
    publisher_mode: str
    batch_size: int
    publish_batch: int
    warmup: int
    publish_per_s: float
    """Messages confirmed by the broker per second, all publishers together."""
    facts_per_s: float
    messages_per_s: float
    elapsed_s: float
    baseline_per_s: float | None
    baseline_publish_per_s: float | None
    baseline_elapsed_s: float | None
    drain_per_s: float | None
    """Messages/s a new consuming bus drains from a backlog (no publishing
    meanwhile), from subscribed (Kafka: assigned) to the last step's commit."""
    baseline_drain_per_s: float | None
    """The same for the raw consumer, timed the same way (to its last receipt)."""
    cpu_us_per_msg: float
    """CPU time of the consuming process (every thread; publisher tasks too when
    they run in it) per message during the peak: less noisy than rates."""
    baseline_cpu_us_per_msg: float | None
    """The same for the baseline (its consumer; its producer too in task mode)."""
    latency_ms: Latency
    half_load: HalfLoad | None
    rss_mb: float
    """Peak resident memory of the consuming process during the factbus phases."""
    rss_start_mb: float
    """Resident memory before the bus started (workload and clients loaded)."""
    floor_per_s: float | None = None
    """Messages/s of the hand-written floor of the receive work (orjson, SHA-512,
    a set; in-process, no store) over the drain's bodies, in the same run:
    see :mod:`factbus.bench.floor`."""
    drain_cpu_us_per_msg: float | None = None
    """CPU time of the consuming process (every thread) per message during the
    drain, same window as ``drain_per_s``."""
    floor_cpu_us_per_msg: float | None = None
    """CPU time per message of the hand-written floor over the same bodies
    (median pass)."""
    pack: int = 1
    """Facts per envelope the publishers packed (``Bus(pack=N)``)."""
    publisher_cpu_us_per_msg: float | None = None
    """CPU time of the publisher processes (every thread: the bus, the client
    library's threads) per message while they published the peak, each from
    its first publish call to the return of its last (broker-confirmed);
    ``None`` when the publishers are tasks of the consuming process (memory://)."""
    baseline_publisher_cpu_us_per_msg: float | None = None
    """The same for the raw producer (its process, from its first message to
    the last confirmation); ``None`` when it runs in the consuming process."""
    memory_per_fact_bytes: float | None = None
    """Bytes a received fact keeps alive once decoded (tracemalloc)."""
    gc_frozen: bool = False
    """The collector's start-up objects were frozen (``--gc-freeze``, as in
    ``factbus worker``) for the raw client's phase and factbus's alike."""
    publish_inflight: int = 1
    """Publish calls each publisher kept in flight in the warm-up, peak and
    drain backlog (``--publish-inflight``; 1: each call awaited its confirms
    before the next). The raw producer is unchanged by it."""
    native: bool | None = None
    """The native helper verified received envelopes in the consuming process
    (:data:`factbus.envelope.NATIVE`); ``False``: the plain Python receive
    path; ``None``: not recorded (results from before the field)."""
    native_reason: str = ""
    """Why the native helper was not in use (:data:`factbus.envelope.NATIVE_REASON`;
    ``""`` when it was, or not recorded)."""
    pipeline: dict[str, Any] = field(default_factory=dict)
    """The consuming bus's counters (duplicates, parked, released, steps, ...)."""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """End-to-end messages/s over the baseline's."""
        if not self.baseline_per_s:
            return None
        return self.messages_per_s / self.baseline_per_s

    @property
    def publish_ratio(self) -> float | None:
        if not self.baseline_publish_per_s:
            return None
        return self.publish_per_s / self.baseline_publish_per_s

    @property
    def drain_ratio(self) -> float | None:
        if not self.drain_per_s or not self.baseline_drain_per_s:
            return None
        return self.drain_per_s / self.baseline_drain_per_s

    @property
    def floor_ratio(self) -> float | None:
        """Drain messages/s over the hand-written floor's (same bodies, same run)."""
        if not self.drain_per_s or not self.floor_per_s:
            return None
        return self.drain_per_s / self.floor_per_s

    @property
    def floor_cpu_ratio(self) -> float | None:
        """The floor's CPU µs per message over the drain's (same bodies, same
        run): like ``floor_ratio`` but in CPU time, so the machine's load at
        the two moments does not enter it."""
        if not self.drain_cpu_us_per_msg or not self.floor_cpu_us_per_msg:
            return None
        return self.floor_cpu_us_per_msg / self.drain_cpu_us_per_msg

    @property
    def scheme(self) -> str:
        return self.transport.split("://", 1)[0]

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict: every field plus ``ratio``, ``publish_ratio``,
        ``drain_ratio``, ``floor_ratio``, ``floor_cpu_ratio`` and ``scheme``."""
        data = asdict(self)
        data["ratio"] = _round(self.ratio)
        data["publish_ratio"] = _round(self.publish_ratio)
        data["drain_ratio"] = _round(self.drain_ratio)
        data["floor_ratio"] = _round(self.floor_ratio)
        data["floor_cpu_ratio"] = _round(self.floor_cpu_ratio)
        data["scheme"] = self.scheme
        for key in (
            "publish_per_s",
            "facts_per_s",
            "messages_per_s",
            "baseline_per_s",
            "baseline_publish_per_s",
        ):
            data[key] = _round(data[key], 1)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResult:
        """The inverse of :meth:`as_json` (extra keys are ignored)."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names}
        values["latency_ms"] = Latency(**values["latency_ms"])
        half = values.get("half_load")
        if half is not None:
            values["half_load"] = HalfLoad(
                half["target_per_s"],
                half["achieved_per_s"],
                Latency(**half["latency_ms"]),
                half.get("publish_lag_p99_ms", 0.0),
                half.get("cpu_us_per_msg"),
                half.get("publisher_cpu_us_per_msg"),
            )
        return cls(**values)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def machine() -> dict[str, Any]:
    """A short description of this machine, for the report."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gb = None
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        load = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_avg": load,  # 1/5/15-minute load when the run ended: other work on the machine
    }
