"""``factbus worker``: processes, progress, restarts, graceful shutdown, config errors.

The workers here run on the memory transport, which cannot carry messages
between processes, so each worker feeds itself (``group_app.build_feeding_bus``);
they share a PostgreSQL store and an effect table. The full guarantee across
processes over real brokers is in ``test_group_brokers``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from group_support import EffectTable

from factbus.testing.brokers import broker_url, drop_schema, unique, with_options
from factbus.testing.commands import WorkerCommand, handled_in

HERE = Path(__file__).resolve().parent


@pytest.fixture
async def app_env() -> AsyncIterator[dict[str, str]]:
    """Environment for ``group_app`` on a fresh schema (dropped afterwards)."""
    pg = broker_url("postgres")
    schema = unique("fbcmd", "_")
    await EffectTable(schema).create(pg)
    env = dict(os.environ)
    env.update(
        GROUP_APP_TRANSPORT=f"memory://cmd-{uuid.uuid4().hex[:8]}",
        GROUP_APP_STORE=with_options(pg, schema=schema, pool_max=2),
        GROUP_APP_TOPIC="facts",
        GROUP_APP_SCHEMA=schema,
        GROUP_APP_FEED="3000",
        GROUP_APP_FEED_RATE="300",
        FACTBUS_LOG_LEVEL="error",
        PG_URL=pg,
    )
    try:
        yield env
    finally:
        await drop_schema(pg, schema)


def group_worker(env: dict[str, str], target: str, *args: str) -> WorkerCommand:
    """``factbus worker`` on ``group_app`` as a subprocess, its stderr collected."""
    return WorkerCommand(target, *args, app_dir=HERE, env=env)


async def _effects(env: dict[str, str]) -> tuple[int, int, bool]:
    """(rows, distinct facts, all in order) of the effect table."""
    conn = await asyncpg.connect(env["PG_URL"])
    try:
        row = await conn.fetchrow(
            f"SELECT count(*), count(DISTINCT hash), coalesce(bool_and(in_order), true) "
            f'FROM "{env["GROUP_APP_SCHEMA"]}".effects'
        )
    finally:
        await conn.close()
    assert row is not None
    return row[0], row[1], row[2]


async def test_workers_report_progress_and_stop_gracefully_on_sigterm(
    app_env: dict[str, str],
) -> None:
    async with group_worker(app_env, "group_app:build_feeding_bus", "--workers", "2") as worker:
        await worker.wait_for("2/2 up")
        children = worker.children()
        assert len(children) == 2
        line = await worker.wait_for("handled/s", timeout=30)
        deadline = time.monotonic() + 30
        while handled_in(line) < 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
            line = await worker.wait_for("handled/s")
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_status() == 0
        final = worker.lines[-1]
        assert "stopped after" in final, worker.lines[-5:]
        assert not any("exited with status" in line for line in worker.lines)
        for child in children:
            assert not child.is_running()
    rows, distinct, in_order = await _effects(app_env)
    assert rows == distinct == handled_in(final)
    assert in_order


async def test_a_worker_killed_with_9_is_replaced(app_env: dict[str, str]) -> None:
    async with group_worker(app_env, "group_app:build_feeding_bus", "--workers", "2") as worker:
        await worker.wait_for("2/2 up")
        before = {child.pid for child in worker.children()}
        victim = min(before)
        mark = worker.mark()
        os.kill(victim, signal.SIGKILL)
        await worker.wait_for("exited with status -9", after=mark)
        await worker.wait_for("restarts 1", after=mark)
        await worker.wait_for("2/2 up | ", after=mark)
        after = {child.pid for child in worker.children()}
        assert victim not in after and len(after) == 2
        assert worker.process is not None
        worker.process.send_signal(signal.SIGINT)
        assert await worker.exit_status() == 0
    rows, distinct, in_order = await _effects(app_env)
    assert rows == distinct and in_order


async def test_without_restart_a_dead_worker_stops_the_group(app_env: dict[str, str]) -> None:
    async with group_worker(
        app_env, "group_app:build_feeding_bus", "--workers", "2", "--no-restart"
    ) as worker:
        await worker.wait_for("2/2 up")
        os.kill(worker.children()[0].pid, signal.SIGKILL)
        assert await worker.exit_status() == 1
        assert any("exited with status -9" in line for line in worker.lines)


async def test_the_step_in_flight_finishes_before_a_worker_exits(
    app_env: dict[str, str],
) -> None:
    """Handlers take 0.2 s each: SIGTERM lands mid-step; the worker still exits 0
    and what it reported handled is exactly what it committed."""
    env = dict(app_env, GROUP_APP_SLOW="0.2", GROUP_APP_BATCH="20", GROUP_APP_FEED="200")
    async with group_worker(env, "group_app:build_feeding_bus", "--grace", "60") as worker:
        await worker.wait_for("1/1 up")
        line = await worker.wait_for("handled/s")
        while handled_in(line) < 5:
            await asyncio.sleep(0.2)
            line = await worker.wait_for("handled/s")
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_status() == 0
    rows, distinct, in_order = await _effects(env)
    assert rows == distinct == handled_in(worker.lines[-1])
    assert in_order


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("group_app", (), "MODULE:ATTR"),
        ("no_such_module:bus", (), "cannot import"),
        ("group_app:nothing_here", (), "no attribute"),
        ("group_app:not_a_bus", (), "not a factbus.Bus"),
        ("group_app:no_group_bus", ("--workers", "2"), "needs group mode"),
    ],
)
async def test_configuration_errors_exit_2_with_one_clear_line(
    app_env: dict[str, str], target: str, extra: tuple[str, ...], message: str
) -> None:
    async with group_worker(app_env, target, *extra) as worker:
        assert await worker.exit_status() == 2
    assert any(message in line for line in worker.lines), worker.lines
