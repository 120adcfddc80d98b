"""Micro-benchmark timing for the scripts in benchmarks/: the best CPU time of a few
runs of the same work, per item. CPU time of this process (``time.process_time``),
so the figures are less disturbed by other processes on a shared machine than wall
time; the best of several runs drops the runs a collection or a cache miss slowed.
Compare such figures only with others measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

REPEATS = 7
"""Runs per measurement unless told otherwise."""


def best_cpu_us(run: Callable[[], Any], count: int, repeats: int = REPEATS) -> float:
    """Call ``run`` ``repeats`` times; the least CPU time of one call, in µs per item
    (``count`` items a call)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times) / count * 1e6


async def best_cpu_us_async(
    run: Callable[[], Awaitable[Any]], count: int, repeats: int = REPEATS
) -> float:
    """:func:`best_cpu_us` for a coroutine function (awaited on the running loop)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        await run()
        times.append(time.process_time() - start)
    return min(times) / count * 1e6
