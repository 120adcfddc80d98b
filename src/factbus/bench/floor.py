"""The hand-written floor of the receive work, and memory per received fact.

:func:`floor_rate` runs, in this process and with no store, the loop a user
would write by hand to receive the same envelope bodies (issue 15): per body
``orjson.loads``; per fact the canonical form through one ``orjson.dumps(...,
OPT_SORT_KEYS)``, SHA-512 and base64 compared with the claimed hash (again
with JavaScript's float layout when that differs: an integral float), a set
for dedup, a check that every predecessor was seen, and a handler call. It is
what factbus's receive path is compared with (``floor_ratio`` in wall time,
``floor_cpu_ratio`` in CPU time): no verification is skipped, but nothing a
bus adds (causal buffering, a store, acks, broker I/O) is done.

:func:`floor_measure` runs the loop for at least :data:`MIN_PASSES` passes
and :data:`MIN_SECONDS` of wall time (at most :data:`MAX_PASSES`), so that
the figures are not a few milliseconds' window on a shared machine, and
reports the median pass in messages/s (wall) and in CPU µs per message.

:func:`memory_per_fact` measures with :mod:`tracemalloc` how many bytes a
received :class:`~factbus.Fact` keeps alive once decoded and written as the
store writes it (its wire bytes computed), the memory a step's facts take.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import statistics
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from factbus.canonical import canonical_bytes
from factbus.envelope import decode

MIN_PASSES = 5
"""Passes :func:`floor_measure` makes at least."""
MIN_SECONDS = 1.0
"""Wall seconds :func:`floor_measure` keeps making passes for (after MIN_PASSES)."""
MAX_PASSES = 50
"""Passes :func:`floor_measure` makes at most."""


@dataclass(frozen=True, slots=True)
class Floor:
    """The floor's figures over one set of bodies (medians over passes)."""

    per_s: float
    """Messages per second, wall time."""
    cpu_us_per_msg: float
    """CPU time of this process (every thread) per message, µs."""
    passes: int


def floor_pass(bodies: Sequence[bytes]) -> int:
    """One pass of the hand-written loop over ``bodies``; returns the facts handled.

    :raises ValueError: a hash does not match its content (not on bench bodies).
    """
    loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    sha512, b64 = hashlib.sha512, base64.b64encode
    seen: set[str] = set()
    handled: list[Any] = []
    handle = handled.append
    waiting = 0
    for body in bodies:
        for wire in loads(body)["facts"]:
            preds = wire["predecessors"]
            canonical = dumps({"fields": wire["fields"], "predecessors": preds}, option=sort_keys)
            fact_hash = b64(sha512(canonical).digest()).decode()
            if fact_hash != wire["hash"]:
                # A float orjson lays out otherwise than JavaScript (37.0 for 37):
                # what a hand-written loop must handle too.
                canonical = canonical_bytes(wire["fields"], preds, False, True)
                fact_hash = b64(sha512(canonical).digest()).decode()
            if fact_hash != wire["hash"]:
                raise ValueError(f"hash mismatch for {wire['hash'][:16]}...")
            if fact_hash in seen:
                continue
            for value in preds.values():
                for ref in value if type(value) is list else (value,):
                    if ref["hash"] not in seen:
                        waiting += 1
            seen.add(fact_hash)
            handle(wire)
    return len(handled)


def floor_measure(
    bodies: Sequence[bytes],
    min_passes: int = MIN_PASSES,
    min_seconds: float = MIN_SECONDS,
    max_passes: int = MAX_PASSES,
) -> Floor:
    """:func:`floor_pass` over ``bodies`` repeated (see the module docstring):
    the median pass's messages/s (wall time, like the drain's ``drain_per_s``)
    and CPU µs per message (``time.process_time``: this process, every thread,
    like the drain's ``drain_cpu_us_per_msg``).

    :raises ValueError: ``bodies`` is empty or ``min_passes`` is below 1.
    """
    if not bodies or min_passes < 1:
        raise ValueError("floor_measure needs bodies and at least one pass")
    rates: list[float] = []
    cpus: list[float] = []
    began = time.perf_counter()
    while len(rates) < max(min_passes, 1) or (
        time.perf_counter() - began < min_seconds and len(rates) < max_passes
    ):
        cpu = time.process_time()
        start = time.perf_counter()
        floor_pass(bodies)
        end = time.perf_counter()
        cpus.append((time.process_time() - cpu) / len(bodies) * 1e6)
        rates.append(len(bodies) / max(end - start, 1e-9))
    return Floor(round(statistics.median(rates), 1), round(statistics.median(cpus), 3), len(rates))


def memory_per_fact(bodies: Sequence[bytes]) -> float:
    """Bytes (tracemalloc) each fact decoded from ``bodies`` keeps alive, with its
    wire bytes computed as the store does when it records it."""
    gc.collect()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        facts = [fact for body in bodies for fact in decode(body)]
        for fact in facts:
            fact.wire_bytes()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if not tracing:
            tracemalloc.stop()
    count = len(facts)
    del facts
    return round((after - before) / max(count, 1), 1)
