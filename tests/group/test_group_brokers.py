"""Group mode over real brokers: four worker processes, one killed with -9.

``factbus worker group_app:build_bus --workers 4`` runs four processes that
share one broker group and one PostgreSQL store. The test publishes a shuffled
DAG with duplicates (20,000 facts by default), kills one worker with SIGKILL
once a quarter of the facts are handled (the supervisor starts a new one), and
then checks the effect table, written in the same transaction as each handled
mark: every fact handled exactly once, each after all its predecessors.

``FACTBUS_GROUP_FACTS`` shrinks the run for quick local checks; CI keeps the
default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from group_support import (
    EffectTable,
    Verdict,
    env_int,
)

from factbus import Bus
from factbus.testing.brokers import (
    broker_url,
    drop_schema,
    prepare_group,
    unique,
    with_options,
)
from factbus.testing.commands import WorkerCommand
from factbus.testing.scenario import random_dag, shuffled_with_duplicates

HERE = Path(__file__).resolve().parent
FACTS = env_int("FACTS", 20_000)
WORKERS = 4
DEADLINE = float(os.environ.get("FACTBUS_GROUP_DEADLINE", "240"))


@pytest.fixture
async def schema() -> AsyncIterator[tuple[str, str]]:
    pg = broker_url("postgres")
    name = unique("fbgroup", "_")
    try:
        yield pg, name
    finally:
        await drop_schema(pg, name)


async def wait_up(supervisor: WorkerCommand, count: int, timeout: float) -> None:
    """Wait until the supervisor's latest lines say ``count`` workers are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(f"factbus worker: {count}/") for line in supervisor.lines[-3:]):
            return
        supervisor.check_alive()
        await asyncio.sleep(0.2)
    raise AssertionError(f"workers not up in {timeout}s:\n{supervisor.tail()}")


def _app_env(transport: str, store: str, topic: str, group: str, schema: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GROUP_APP_TRANSPORT=transport,
        GROUP_APP_STORE=store,
        GROUP_APP_TOPIC=topic,
        GROUP_APP_GROUP=group,
        GROUP_APP_SCHEMA=schema,
        GROUP_APP_NODE="worker",
        FACTBUS_LOG_LEVEL="error",
    )
    return env


async def run_group_with_kill(transport_url: str, pg: str, schema: str) -> Verdict:
    """Publish, kill one worker mid-stream, wait for completion, stop; the verdict."""
    table = EffectTable(schema)
    await table.create(pg)
    store = with_options(pg, schema=schema, pool_max=3)
    topic, group = unique("group"), unique("workers")
    dag = random_dag(FACTS, seed=11)
    order = shuffled_with_duplicates(dag, duplicates=0.3, seed=11)
    await prepare_group(transport_url, topic, group)
    supervisor = WorkerCommand(
        "group_app:build_bus",
        "--workers",
        str(WORKERS),
        app_dir=HERE,
        env=_app_env(transport_url, store, topic, group, schema),
        every=1,
    )
    publisher = Bus(transport_url, "memory://", topic=topic, node="publisher", consume=False)
    conn = await asyncpg.connect(pg)
    started = time.monotonic()
    try:
        await publisher.start()  # so that aclose() closes its connection
        await supervisor.start()
        await wait_up(supervisor, WORKERS, timeout=90)
        up = time.monotonic()
        first = {child.pid for child in supervisor.children()}
        assert len(first) == WORKERS

        async def publish() -> None:
            for start in range(0, len(order), 500):
                await publisher.publish(*order[start : start + 500], ancestors=False)

        publishing = asyncio.create_task(publish())
        killed: int | None = None
        deadline = time.monotonic() + DEADLINE
        done = 0
        while done < FACTS:
            assert time.monotonic() < deadline, (
                f"only {done}/{FACTS} handled in {DEADLINE}s:\n" + "\n".join(supervisor.lines[-20:])
            )
            supervisor.check_alive()
            if publishing.done():
                publishing.result()
            done = await table.count(conn)
            if killed is None and done >= FACTS // 4:
                victim = sorted(first)[1]
                os.kill(victim, signal.SIGKILL)
                killed = victim
            await asyncio.sleep(0.25)
        await publishing
        finished = time.monotonic()
        print(
            f"{transport_url.split(':')[0]}: {FACTS} facts ({len(order)} messages), "
            f"workers up in {up - started:.1f}s, all handled {finished - up:.1f}s later "
            f"({FACTS / (finished - up):,.0f} facts/s, one worker killed -9 at {FACTS // 4})"
        )
        assert killed is not None
        # A new worker took the killed one's place.
        now = {child.pid for child in supervisor.children()}
        assert killed not in now
        # Quiet for a moment: nothing handled twice late, nothing left parked.
        await asyncio.sleep(2.0)
        parked = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".factbus_facts WHERE state = 2'
        )
        assert parked == 0
        status = await supervisor.stop()
        assert status == 0, "\n".join(supervisor.lines[-30:])
        assert any("worker 1 exited with status -9" in line for line in supervisor.lines)
        assert any("restarts 1" in line for line in supervisor.lines[-3:])
        return await table.verdict(pg, dag)
    finally:
        with contextlib.suppress(Exception):
            await supervisor.stop(timeout=30)
        await publisher.aclose()
        await conn.close()


@pytest.mark.timeout(360)
@pytest.mark.parametrize("broker", ["kafka", "amqp"])
async def test_four_worker_processes_share_the_work_and_survive_kill_9(
    broker: str, schema: tuple[str, str]
) -> None:
    url = broker_url(broker)
    pg, name = schema
    verdict = await run_group_with_kill(url, pg, name)
    assert verdict.perfect, verdict
    assert verdict.handled == FACTS
    # The work was shared: at least three worker names did some of it.
    assert sum(1 for n in verdict.by_worker.values() if n > 0) >= 3, verdict.by_worker
