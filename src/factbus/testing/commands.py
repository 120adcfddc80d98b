"""factbus's commands in subprocesses, for tests and studies that run a command
itself, always with this Python (``python -m factbus ...``): one run to its end
(:func:`run_factbus`; any other command: :func:`run_command`), a sidecar until
it listens (:func:`start_sidecar`), and ``factbus worker`` with its log lines
collected as they come (:class:`WorkerCommand`).

Needs ``psutil`` (the ``bench`` extra) only for :meth:`WorkerCommand.children`.
:class:`WorkerCommand` starts the command in a session of its own and ends the
whole process group on exit; it finds the group's live processes in ``/proc``
(Linux), elsewhere it can only tell that the group is empty from ``killpg``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil


GRACE = 10.0
"""Seconds :meth:`WorkerCommand.terminate` waits after SIGTERM before SIGKILL."""

LISTENING = "factbus sidecar: listening on "
"""How the first line ``factbus sidecar`` prints on stdout begins (the URL follows)."""


def factbus_argv(*args: str) -> list[str]:
    """The command line of ``factbus ARGS`` with this Python."""
    return [sys.executable, "-m", "factbus", *args]


async def run_factbus(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run ``factbus ARGS`` to its end; its exit status, stdout and stderr."""
    return await run_command(factbus_argv(*args), env=env, cwd=cwd)


async def run_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run ``argv`` to its end; its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def start_sidecar(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``factbus sidecar ARGS --listen 127.0.0.1:0`` (stdout and stderr piped)
    and wait up to ``timeout`` seconds for the line that says where it listens;
    the process and its base URL. AssertionError (with its stderr) if the first
    line says something else; the caller stops the process."""
    process = await asyncio.create_subprocess_exec(
        *factbus_argv("sidecar", *args, "--listen", "127.0.0.1:0"),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            first = (await process.stdout.readline()).decode()
        if not first.startswith(f"{LISTENING}http://127.0.0.1:"):
            process.kill()
            raise AssertionError(first + (await process.stderr.read()).decode())
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    return process, first.removeprefix(LISTENING).split()[0]


class WorkerCommand:
    """``factbus worker TARGET --app-dir APP_DIR --progress log --progress-every EVERY
    *ARGS`` (``--progress off`` when ``every`` is None) with the environment ``env``.

    Its stderr lines (with ``merge_stdout``, its stdout and stderr as one stream)
    are collected in :attr:`lines`; without ``merge_stdout`` its stdout is this
    process's. It runs in a session (and process group) of its own, with its
    worker processes. As an async context manager it is started on entry and,
    on exit, its whole group is ended (:meth:`terminate`): no worker outlives it.
    """

    def __init__(
        self,
        target: str,
        *args: str,
        app_dir: Path,
        env: Mapping[str, str],
        every: float | None = 0.5,
        merge_stdout: bool = False,
        grace: float = GRACE,
    ) -> None:
        progress = ["off"] if every is None else ["log", "--progress-every", str(every)]
        self.argv = factbus_argv(
            "worker", target, "--app-dir", str(app_dir), "--progress", *progress, *args
        )
        self.env = dict(env)
        self.merge_stdout = merge_stdout
        self.grace = grace
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the command and the collection of its lines."""
        pipe, merged = asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=pipe if self.merge_stdout else None,
            stderr=merged if self.merge_stdout else pipe,
            start_new_session=True,  # its group: the supervisor and its workers
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        process = self._started()
        stream = process.stdout if self.merge_stdout else process.stderr
        assert stream is not None
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    def _started(self) -> asyncio.subprocess.Process:
        assert self.process is not None, "the worker command was not started"
        return self.process

    async def __aenter__(self) -> WorkerCommand:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.terminate()

    async def terminate(self) -> None:
        """End the command's whole process group, the supervisor and every worker
        (also those a supervisor that already exited left behind): SIGTERM to the
        group, then SIGKILL to what is still alive after :attr:`grace` seconds;
        returns once none of them is alive and every line is collected."""
        process = self._started()
        group = process.pid  # the session leader's pid is its group's id
        deadline: float | None = None
        while _group_alive(group):
            if deadline is None:  # once: a second SIGTERM makes the supervisor kill
                _signal_group(group, signal.SIGTERM)
                deadline = time.monotonic() + self.grace
            elif time.monotonic() >= deadline:
                _signal_group(group, signal.SIGKILL)
            await asyncio.sleep(0.05)
        await process.wait()
        if self._reader is not None:
            await self._reader

    @property
    def pid(self) -> int:
        """The supervisor's process id."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs."""
        return self._started().returncode

    def tail(self, count: int = 30) -> str:
        """The last ``count`` lines, for a failure message."""
        return "\n".join(self.lines[-count:])

    def mark(self) -> int:
        """A position in the output: ``wait_for(..., after=mark)`` looks past it."""
        return len(self.lines)

    async def wait_for(self, text: str, timeout: float = 60.0, after: int = 0) -> str:
        """The latest line past ``after`` that contains ``text``, as soon as there is
        one; AssertionError (with the last lines) if the command exits first or
        ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in reversed(self.lines[after:]):
                if text in line:
                    return line
            if self.returncode is not None:
                raise AssertionError(
                    f"no line with {text!r}: factbus worker exited with "
                    f"{self.returncode}:\n{self.tail()}"
                )
            await asyncio.sleep(0.1)
        raise AssertionError(f"no line with {text!r} in {timeout}s:\n{self.tail()}")

    def check_alive(self) -> None:
        """AssertionError (with the last lines) if the command has exited."""
        if self.returncode is not None:
            raise AssertionError(f"factbus worker exited with {self.returncode}:\n{self.tail(40)}")

    async def exit_status(self, timeout: float = 60.0) -> int:
        """Wait up to ``timeout`` seconds for the command to exit; its status, once
        every line it wrote is collected."""
        status = await asyncio.wait_for(self._started().wait(), timeout)
        if self._reader is not None:
            await self._reader
        return status

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to the supervisor (a graceful stop: it stops its workers), then
        its exit status; its whole group is killed if it has not exited within
        ``timeout`` seconds (the TimeoutError goes on)."""
        process = self._started()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            return await self.exit_status(timeout)
        finally:
            if process.returncode is None:
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
                if self._reader is not None:
                    await self._reader

    def handled(self) -> int:
        """The highest count of handled facts its progress lines gave (0 before the
        first)."""
        return max((handled_in(line) for line in self.lines if "| handled " in line), default=0)

    def children(self) -> list[psutil.Process]:
        """The supervisor's worker processes now (none once it has exited)."""
        import psutil

        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []


def group_members(group: int) -> list[int] | None:
    """The pids of the live (not zombie) processes of process group ``group``, from
    ``/proc``; None where there is no ``/proc``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members: list[int] = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = text[text.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[2]) == group:
            members.append(int(entry))
    return members


def _group_alive(group: int) -> bool:
    members = group_members(group)
    if members is not None:
        return bool(members)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def handled_in(line: str) -> int:
    """The count of handled facts in one progress line (``... | handled 1,234 ...``)."""
    return int(line.split("| handled ")[1].split(" ")[0].replace(",", ""))
