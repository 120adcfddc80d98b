"""The hand-written floor of the receive work, and memory per received fact.

:func:`floor_rate` runs, in this process and with no store, the loop a user
would write by hand to receive the same envelope bodies (issue 15): per body
``orjson.loads``; per fact the canonical form through one ``orjson.dumps(...,
OPT_SORT_KEYS)``, SHA-512 and base64 compared with the claimed hash (again
with JavaScript's float layout when that differs: an integral float), a set
for dedup, a check that every predecessor was seen, and a handler call. It is
what factbus's receive path is compared with (``floor_ratio``): no verification
is skipped, but nothing a bus adds (causal buffering, a store, acks, broker
I/O) is done.

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
from typing import Any

import orjson

from factbus.canonical import canonical_bytes
from factbus.envelope import decode

REPEATS = 3


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


def floor_rate(bodies: Sequence[bytes], repeats: int = REPEATS) -> float:
    """Messages per second of :func:`floor_pass` over ``bodies``: the median of
    ``repeats`` passes (wall time, like the drain it is compared with)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        floor_pass(bodies)
        rates.append(len(bodies) / max(time.perf_counter() - start, 1e-9))
    return round(statistics.median(rates), 1)


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
