"""``memory://`` baseline: a bare ``asyncio.Queue`` hand-off of the same bodies.

The producer puts each chunk with ``put_nowait`` and yields once per chunk;
the consumer awaits ``get()`` per message. This is the floor of any in-process
hand-off: no codec, no hashing, no store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from factbus.bench.baseline import Arrivals


class MemoryBaseline(Arrivals):
    """See the module docstring."""

    client = "asyncio.Queue"

    def __init__(self, url: str, destination: str) -> None:
        self.url = url
        self.destination = destination
        self._queue: asyncio.Queue[bytes] | None = None

    def _q(self) -> asyncio.Queue[bytes]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    async def setup(self, subscribe: bool = True) -> None:
        self._q()

    async def subscribe(self) -> None:
        pass

    async def produce(
        self, bodies: Sequence[bytes], keys: Sequence[str], chunks: Sequence[range]
    ) -> tuple[float, float]:
        put = self._q().put_nowait
        start = time.perf_counter()
        for chunk in chunks:
            for i in chunk:
                put(bodies[i])
            await asyncio.sleep(0)
        return start, time.perf_counter()

    async def consume(self, count: int, timeout: float) -> float:
        queue = self._q()
        async with asyncio.timeout(timeout):
            while self.received < count:
                await queue.get()
                self.arrived()
        return time.perf_counter()

    async def teardown(self, remove: bool = True) -> list[str]:
        self._queue = None
        return []
