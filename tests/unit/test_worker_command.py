"""``factbus.testing.commands.WorkerCommand`` leaves no process behind: on exit it
ends the supervisor's whole process group, its workers included, also when the
supervisor is already gone (killed with SIGKILL: nothing forwards a stop) or a
worker is stuck (SIGKILL after the command's grace). Real ``factbus worker``
processes on the memory transport. The 60 s bounds are behaviour bounds (the
old exit waited for a stuck orphan's 10 minutes), not speed figures."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from factbus.testing.commands import WorkerCommand, group_members
from factbus.testing.polling import eventually

HERE = Path(__file__).resolve().parent


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def command(target: str) -> WorkerCommand:
    env = {**os.environ, "FACTBUS_LOG_LEVEL": "error"}
    # The supervisor's own grace is longer than the command's: the command kills.
    return WorkerCommand(
        f"worker_command_app:{target}", "--grace", "120", app_dir=HERE, env=env, grace=1.0
    )


def supervisor_gone(pid: int) -> Callable[[], Awaitable[bool]]:
    async def gone() -> bool:
        return not alive(pid)

    return gone


async def worker_pid(worker: WorkerCommand) -> int:
    line = await worker.wait_for("worker pid ", timeout=60)
    return int(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("target", ["quiet_bus", "stuck_bus"])
async def test_no_worker_outlives_the_command(target: str) -> None:
    worker = command(target)
    async with asyncio.timeout(60):
        async with worker:
            child = await worker_pid(worker)
            assert alive(child)
            assert os.getpgid(child) == worker.pid  # the command's group, not this process's
    assert not alive(child)
    assert group_members(worker.pid) == []


async def test_workers_of_a_killed_supervisor_are_ended() -> None:
    """The old exit killed the supervisor alone: its stuck worker was orphaned
    (and the exit waited for it, which held the output pipe)."""
    worker = command("stuck_bus")
    async with asyncio.timeout(60):
        async with worker:
            child = await worker_pid(worker)
            os.kill(worker.pid, signal.SIGKILL)
            # Not exit_status() nor wait(): both also wait for the output's end,
            # which the orphan holds.
            await eventually(supervisor_gone(worker.pid), 30, "the supervisor's end")
            assert alive(child)  # orphaned and stuck
    assert not alive(child)
