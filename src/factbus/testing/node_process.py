"""A bus run as a test's subprocess (a worker script that a kill or fault test
starts, watches and kills): the lines it prints for that test, and its death.

On stdout, one line each, flushed at once: ``ready`` once the bus is started
(subscribed), ``stats {json}`` (:meth:`factbus.pipeline.PipelineStats.as_dict`)
every second while it runs, ``closed`` after a graceful stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import orjson

from factbus.bus import Bus


async def serve(bus: Bus, *also_close: Callable[[], Awaitable[None]]) -> None:
    """Start ``bus`` and run it until SIGTERM, printing the lines above; on SIGTERM
    close the bus, then each of ``also_close`` in turn, then print ``closed``."""
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await bus.start()
    print("ready", flush=True)
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)
        print("stats", orjson.dumps(bus.stats.as_dict()).decode(), flush=True)
    await bus.aclose()
    for close in also_close:
        await close()
    print("closed", flush=True)


def die() -> None:
    """``kill -9`` this process at once, stdout flushed first: a crash that nothing
    can catch or clean up after."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
