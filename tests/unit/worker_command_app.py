"""Buses ``factbus worker`` runs in test_worker_command.py: each worker process
says its pid on stderr once the bus is built (memory transport and store: no
broker). ``stuck_bus`` then blocks its worker's event loop for 10 minutes, as a
worker stuck in a step would: it neither acts on SIGTERM nor notices that its
supervisor is gone."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from factbus import Bus, Fact

STUCK_FOR = 600.0


def quiet_bus() -> Bus:
    bus = Bus("memory://cleanup", "memory://", topic="cleanup", node="cleanup")

    @bus.handler("Cleanup.Never")
    def never(fact: Fact) -> None:
        pass

    print(f"worker pid {os.getpid()}", file=sys.stderr, flush=True)
    return bus


def stuck_bus() -> Bus:
    # Stuck from the loop's next round: before the worker reports to its supervisor.
    asyncio.get_running_loop().call_soon(time.sleep, STUCK_FOR)
    return quiet_bus()
