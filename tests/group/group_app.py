"""The bus the group-mode tests run in worker processes (``factbus worker group_app:...``).

Configured by environment variables so that each test can point it elsewhere:

``GROUP_APP_TRANSPORT``, ``GROUP_APP_STORE``, ``GROUP_APP_TOPIC``, ``GROUP_APP_GROUP``,
``GROUP_APP_SCHEMA`` (where the effect table is), ``GROUP_APP_TYPES`` (comma-separated
fact types to handle), ``GROUP_APP_BATCH`` (deliveries per step), ``GROUP_APP_SLOW``
(seconds each handler call sleeps).

Each handled fact inserts one effect row in the same transaction as its handled
mark (see ``group_support.EffectTable``).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from group_support import EffectTable, record_effect

from factbus import Bus, Fact
from factbus.testing.scenario import random_dag

if TYPE_CHECKING:
    import asyncpg

SCENARIO_TYPES = "Scenario.Independent,Scenario.Chains,Scenario.FanIn"


def build_bus() -> Bus:
    """One worker's bus: group mode over a shared PostgreSQL store."""
    env = os.environ
    bus = Bus(
        env["GROUP_APP_TRANSPORT"],
        env["GROUP_APP_STORE"],
        topic=env["GROUP_APP_TOPIC"],
        group=env.get("GROUP_APP_GROUP", "workers"),
        node=env.get("GROUP_APP_NODE", "worker"),
        batch_size=int(env.get("GROUP_APP_BATCH", "256")),
    )
    table = EffectTable(env["GROUP_APP_SCHEMA"])
    slow = float(env.get("GROUP_APP_SLOW", "0"))

    async def effect(fact: Fact, conn: asyncpg.Connection) -> None:
        if slow:
            await asyncio.sleep(slow)
        await record_effect(conn, table, bus.settings.node_name, fact)

    for fact_type in env.get("GROUP_APP_TYPES", SCENARIO_TYPES).split(","):
        bus.handler(fact_type, transactional=True)(effect)
    return bus


def build_feeding_bus() -> Bus:
    """A worker that also publishes its own facts, slowly, once started.

    For tests of the worker command on the memory transport, which cannot carry
    messages between processes: each worker feeds itself.
    """
    bus = build_bus()
    count = int(os.environ.get("GROUP_APP_FEED", "400"))
    rate = float(os.environ.get("GROUP_APP_FEED_RATE", "200"))
    start = bus.start

    async def start_and_feed() -> None:
        await start()
        task = asyncio.get_running_loop().create_task(_feed(bus, count, rate))
        _FEEDERS.add(task)
        task.add_done_callback(_FEEDERS.discard)

    bus.start = start_and_feed  # type: ignore[method-assign]
    return bus


_FEEDERS: set[asyncio.Task[None]] = set()


async def _feed(bus: Bus, count: int, rate: float) -> None:
    index = os.environ.get("FACTBUS_WORKER_INDEX", "0")
    dag = random_dag(count, seed=1000 + int(index))
    for start in range(0, len(dag), 10):
        await bus.publish(*dag[start : start + 10], ancestors=False)
        await asyncio.sleep(10 / rate)


def not_a_bus() -> int:
    return 42


no_group_bus = None  # set below only when the environment allows building it
if os.environ.get("GROUP_APP_TRANSPORT"):
    no_group_bus = Bus(
        os.environ["GROUP_APP_TRANSPORT"], "memory://", topic="unused", node="lonely"
    )
