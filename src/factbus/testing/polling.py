"""Waiting, in a test, for what happens in its own time (a broker delivering, a
server getting ready, a row appearing): a check polled until it holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = 0.05,
) -> None:
    """Return once ``check()`` is true (it is awaited every ``interval`` seconds);
    AssertionError naming ``what`` if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
