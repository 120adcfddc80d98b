"""Run N worker processes of a bus (group mode), with a live progress line.

  factbus worker myapp.worker:bus --workers 4

imports myapp.worker and takes its attribute "bus": a factbus.Bus, or a
zero-argument function that returns one (so each process builds its own).
Each worker is a process of its own (python -m factbus worker ... --child I)
that imports the module itself (FACTBUS_WORKER_INDEX=I meanwhile), appends
"-I" to the bus's node name and consumes until told to stop.

More than one worker needs group mode: Bus(..., group="name") and a store the
workers share (postgresql://...). Otherwise each worker would receive every
fact, or keep a store of its own.

Shutdown: SIGTERM or SIGINT to this process is forwarded to every worker as
SIGTERM. A worker then stops taking messages, finishes the step in flight (its
deliveries are acked), closes the bus and exits 0. A second signal, or
--grace seconds without exiting, kills the workers: what they had not acked
comes again to the group, nothing is lost. A worker that dies on its own
(crash, kill -9) is started again (--no-restart: stop everything instead),
unless it failed on its configuration (exit status 2) or on a fatal broker
error (exit status 3: a FatalTransportError, such as a queue that exists with
other arguments; restarting cannot help).

Progress: each worker reports its counters once a second over a pipe; one
line shows their totals (handled/s, handled, duplicates, parked, failed,
rejected, restarts), redrawn in place on a terminal, written every
--progress-every seconds otherwise.

Metrics: --metrics-port P serves each worker's Prometheus metrics
(docs/observability.md) at http://127.0.0.1:P+I/metrics (worker I); a bus
built with Bus(metrics=...) reports into its own registry, served the same way.

Exit status: 0 when every worker stopped cleanly, 1 when one failed or had to
be killed, 2 on a configuration error, 3 on a fatal broker error (the worker's
message, on stderr, says which).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import orjson

from factbus.bus import Bus
from factbus.errors import ConfigError, FatalTransportError
from factbus.gc_freeze import freeze_after_start

if TYPE_CHECKING:
    from factbus.metrics import MetricsServer

STATS_INTERVAL = 1.0  # seconds between two reports of a worker
RESTART_DELAY = 1.0  # seconds before a dead worker is started again
RESTART_LIMIT = 5  # consecutive quick deaths of one worker before giving up
QUICK_DEATH = 10.0  # seconds: a worker that dies sooner than this died "quickly"
EXIT_CONFIG = 2
EXIT_FATAL = 3
"""A worker stopped on a FatalTransportError: the others are stopped, none restarted."""
COUNTERS = ("handled", "duplicates", "parked", "released", "failed", "rejected", "messages")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_bus_arguments(parser, "the bus")
    parser.add_argument("--workers", "-w", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds workers get to finish after SIGTERM before they are killed (default 30)",
    )
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="stop everything when a worker dies instead of starting it again",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "line", "log", "off"),
        default="auto",
        help="live line (terminal), a line every --progress-every seconds (log), or none",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        help="seconds between progress lines when not on a terminal (default 10)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT+I/metrics for worker I "
        "(needs factbus[metrics]; 0: any free port, printed)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoints listen on (default 127.0.0.1)",
    )
    # Internal: how the supervisor starts each worker process.
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stats-fd", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    _split_target(args.target)
    if args.child is not None:
        return asyncio.run(_worker_main(args))
    return asyncio.run(Supervisor(args).run())


# -- loading the bus ------------------------------------------------------------


def _split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{target!r}: give the bus as MODULE:ATTR (e.g. myapp.worker:bus)")
    return module, attr


def add_bus_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The arguments :func:`load_bus` takes: ``target`` (``MODULE:ATTR``, described
    as ``what``) and ``--app-dir`` (``args.target``, ``args.app_dir``)."""
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help=f"{what}: a module and the name of a Bus in it, or of a function returning one",
    )
    parser.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on the import path (default: the current directory)",
    )


def load_bus(target: str, app_dir: str) -> Bus:
    """Import ``target`` (``module:attr``) and return its bus.

    :raises ConfigError: the module or attribute is missing, or is not a Bus
        nor a callable returning one.
    """
    module_name, attr = _split_target(target)
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ConfigError(f"cannot import {module_name!r} (from {path})") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Bus) and callable(obj):
        obj = obj()
    if not isinstance(obj, Bus):
        raise ConfigError(f"{target} is {type(obj).__name__}, not a factbus.Bus")
    return obj


def check_group_mode(bus: Bus, workers: int) -> None:
    """More than one worker needs a group and a shared store.

    :raises ConfigError: otherwise.
    """
    if workers <= 1:
        return
    if not bus.settings.group:
        raise ConfigError(
            f"--workers {workers} needs group mode: build the bus with group='name' "
            "(or FACTBUS_GROUP), so that the workers share the work"
        )
    if not bus.store.shared:
        raise ConfigError(
            f"--workers {workers} needs a store the workers share (postgresql://...), "
            f"not {type(bus.store).__name__}"
        )


# -- one worker process -----------------------------------------------------------


async def _worker_main(args: argparse.Namespace) -> int:
    index: int = args.child
    os.environ["FACTBUS_WORKER_INDEX"] = str(index)
    report = _Reporter(args.stats_fd)
    # Handlers first: a stop asked for while the module imports is noticed
    # before the bus starts taking messages.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        bus = load_bus(args.target, args.app_dir)
        check_group_mode(bus, args.workers)
    except ConfigError as error:
        print(f"factbus worker {index}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    node = f"{bus.settings.node_name}-{index}"
    bus.rename(node)
    await asyncio.sleep(0)  # run the signal handlers of signals that came meanwhile
    if stop.is_set():
        return 0
    exporter = None
    if getattr(args, "metrics_port", None) is not None:
        try:
            exporter = _serve_metrics(bus, args, index)
        except (ConfigError, OSError) as error:
            print(f"factbus worker {index} ({node}): metrics: {error}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"factbus worker {index} ({node}): metrics at {exporter.url}", file=sys.stderr)

    try:
        await bus.start()
    except Exception as error:
        print(f"factbus worker {index} ({node}): cannot start: {error}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await bus.aclose()
        return EXIT_FATAL if isinstance(error, FatalTransportError) else 1
    freeze_after_start()  # full collections no longer walk the start-up's objects
    consumer = bus.consumer
    status = 0
    try:
        while not stop.is_set():
            if not report.send(index, node, "running", bus):
                break  # the supervisor is gone: stop cleanly
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
            if consumer is not None:
                waiters.add(consumer)
            done, _ = await asyncio.wait(
                waiters, timeout=STATS_INTERVAL, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                if waiter is not consumer:
                    waiter.cancel()
            if consumer is not None and consumer in done:
                failure = consumer.exception() if not consumer.cancelled() else None
                if isinstance(failure, FatalTransportError):
                    print(f"factbus worker {index} ({node}): fatal: {failure}", file=sys.stderr)
                    status = EXIT_FATAL
                else:
                    print(
                        f"factbus worker {index} ({node}): consumer stopped: {failure!r}",
                        file=sys.stderr,
                    )
                    status = 1
                break
        report.send(index, node, "stopping", bus)
    finally:
        # Bus.aclose lets the step in flight finish and ack, then closes.
        await bus.aclose()
        if exporter is not None:
            exporter.close()
    report.send(index, node, "stopped", bus)
    return status


def _serve_metrics(bus: Bus, args: argparse.Namespace, index: int) -> MetricsServer:
    """Serve the bus's registry (a new one if it has none) for worker ``index``."""
    from factbus.metrics import Metrics

    if bus.metrics is None:
        bus.metrics = Metrics()
    port = args.metrics_port + index if args.metrics_port else 0
    return bus.metrics.serve(port, args.metrics_host)


class _Reporter:
    """Writes one JSON line of counters per report to the supervisor's pipe."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def send(self, index: int, node: str, state: str, bus: Bus) -> bool:
        """False when the supervisor has gone away (the pipe is closed)."""
        if self._fd is None:
            return True
        stats = bus.stats.as_dict()
        line = orjson.dumps(
            {"index": index, "pid": os.getpid(), "node": node, "state": state, "stats": stats}
        )
        try:
            os.write(self._fd, line + b"\n")
        except (BrokenPipeError, OSError):
            self._fd = None
            return False
        return True


# -- the supervisor ---------------------------------------------------------------


@dataclass
class _Slot:
    """One worker index and the process that currently fills it."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    state: str = "starting"
    current: dict[str, int] = field(default_factory=dict)
    earlier: dict[str, int] = field(default_factory=dict)
    """Counters of the slot's previous processes (before a restart)."""
    quick_deaths: int = 0
    restarts: int = 0
    status: int | None = None

    def total(self, name: str) -> int:
        return self.earlier.get(name, 0) + self.current.get(name, 0)


class Supervisor:
    """Starts and watches the worker processes (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, out: IO[str] | None = None) -> None:
        self.args = args
        self.out = out or sys.stderr
        self.slots = [_Slot(i) for i in range(args.workers)]
        self.stopping = False
        self.fatal: int | None = None
        self._killed = False
        self._signals = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        mode = args.progress
        if mode == "auto":
            mode = "line" if self.out.isatty() else "log"
        self.progress = mode
        self._last_line = 0.0
        self._line_at = time.monotonic()
        self._line_handled = 0
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._rate_handled = 0
        self._started = time.monotonic()

    async def run(self) -> int:
        try:
            self._precheck()
        except ConfigError as error:
            print(f"factbus worker: {error}", file=self.out)
            return EXIT_CONFIG
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal)
        try:
            for slot in self.slots:
                await self._start(slot)
            while not self._all_done():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=STATS_INTERVAL)
                self._render()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self._stop_all()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._render(final=True)
        if self.fatal is not None:
            return self.fatal
        # A worker that got SIGTERM before it could install its handlers had not
        # started consuming: stopping it that way is clean too.
        clean = (0, None, -signal.SIGTERM)
        if self._killed or any(slot.status not in clean for slot in self.slots):
            return 1
        return 0

    def _precheck(self) -> None:
        """Fail early, in this process, on a target that cannot work."""
        module_name, _ = _split_target(self.args.target)
        path = os.path.abspath(self.args.app_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                raise ConfigError(f"cannot import {module_name!r} (from {path})") from None
            raise
        obj: Any = module
        for part in _split_target(self.args.target)[1].split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ConfigError(f"{module_name!r} has no attribute {self.args.target!r}")
        if isinstance(obj, Bus):
            check_group_mode(obj, self.args.workers)
        elif not callable(obj):
            raise ConfigError(f"{self.args.target} is {type(obj).__name__}, not a factbus.Bus")

    # -- processes -------------------------------------------------------------

    def _command(self, index: int, stats_fd: int) -> list[str]:
        args = self.args
        command = [sys.executable, "-m", "factbus"]
        if getattr(args, "log_level", None):
            command += ["--log-level", args.log_level]
        command += [
            "worker",
            args.target,
            "--workers",
            str(args.workers),
            "--app-dir",
            os.path.abspath(args.app_dir),
            "--child",
            str(index),
            "--stats-fd",
            str(stats_fd),
        ]
        if getattr(args, "metrics_port", None) is not None:
            command += ["--metrics-port", str(args.metrics_port)]
            command += ["--metrics-host", args.metrics_host]
        return command

    async def _start(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(slot.index, write_fd), pass_fds=(write_fd,)
            )
        finally:
            os.close(write_fd)
        slot.process = process
        slot.started_at = time.monotonic()
        slot.state = "starting"
        slot.status = None
        task = asyncio.create_task(self._watch(slot, process, read_fd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, slot: _Slot, process: asyncio.subprocess.Process, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    report = orjson.loads(line)
                    slot.state = report["state"]
                    slot.current = {k: int(report["stats"].get(k, 0)) for k in COUNTERS}
        finally:
            transport.close()
        status = await process.wait()
        self._on_exit(slot, status)

    def _on_exit(self, slot: _Slot, status: int) -> None:
        for name in COUNTERS:
            slot.earlier[name] = slot.total(name)
        slot.current = {}
        slot.process = None
        slot.status = status
        slot.state = "exited" if status == 0 else f"exited {status}"
        self._wake.set()
        if self.stopping:
            return
        print(
            ("\n" if self.progress == "line" else "")
            + f"factbus worker: worker {slot.index} exited with status {status}",
            file=self.out,
            flush=True,
        )
        if status in (EXIT_CONFIG, EXIT_FATAL):
            self.fatal = status
            self._begin_stop()
            return
        if not self.args.restart:
            self.fatal = 1
            self._begin_stop()
            return
        quick = time.monotonic() - slot.started_at < QUICK_DEATH
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        if slot.quick_deaths >= RESTART_LIMIT:
            print(
                f"factbus worker: worker {slot.index} died {RESTART_LIMIT} times in a row "
                "right after starting; giving up",
                file=self.out,
            )
            self.fatal = 1
            self._begin_stop()
            return
        task = asyncio.create_task(self._restart(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, slot: _Slot) -> None:
        await asyncio.sleep(RESTART_DELAY * max(1, slot.quick_deaths))
        if self.stopping:
            return
        slot.restarts += 1
        await self._start(slot)

    def _all_done(self) -> bool:
        if not self.stopping:
            return False
        return all(slot.process is None for slot in self.slots)

    # -- shutdown ----------------------------------------------------------------

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self._begin_stop()
        else:
            self._kill_all()

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        task = asyncio.create_task(self._enforce_grace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._wake.set()

    async def _enforce_grace(self) -> None:
        deadline = time.monotonic() + self.args.grace
        while time.monotonic() < deadline:
            if all(slot.process is None for slot in self.slots):
                return
            await asyncio.sleep(0.1)
        self._kill_all()

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    def _kill_all(self) -> None:
        if any(s.process is not None and s.process.returncode is None for s in self.slots):
            self._killed = True
        self._signal_all(signal.SIGKILL)

    async def _stop_all(self) -> None:
        if not self.stopping:
            self._begin_stop()
        while not all(slot.process is None for slot in self.slots):
            self._wake.clear()
            await self._wake.wait()

    # -- progress --------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        return {name: sum(slot.total(name) for slot in self.slots) for name in COUNTERS}

    def _render(self, *, final: bool = False) -> None:
        if self.progress == "off":
            return
        now = time.monotonic()
        totals = self.totals()
        elapsed = now - self._rate_at
        if elapsed >= 0.5:
            instant = (totals["handled"] - self._rate_handled) / elapsed
            self._rate = instant if self._rate == 0 else 0.5 * self._rate + 0.5 * instant
            self._rate_at, self._rate_handled = now, totals["handled"]
        due = self.progress == "line" or final or now - self._last_line >= self.args.progress_every
        if not due:
            return
        rate = self._rate  # the live line: a moving average over about a second
        if self.progress != "line":
            # A line every --progress-every seconds: the average since the previous
            # line (the moving average would show the last second only: ~0 after a burst).
            since = now - self._line_at
            rate = (totals["handled"] - self._line_handled) / since if since > 0 else 0.0
            self._line_at, self._line_handled = now, totals["handled"]
        up = sum(1 for slot in self.slots if slot.state == "running")
        restarts = sum(slot.restarts for slot in self.slots)
        state = "stopping" if self.stopping and not final else ("stopped" if final else "")
        line = (
            f"factbus worker: {up}/{len(self.slots)} up | "
            f"{rate:,.0f} handled/s | handled {totals['handled']:,} | "
            f"dup {totals['duplicates']:,} | parked {totals['parked']:,} | "
            f"failed {totals['failed']:,} | rejected {totals['rejected']:,} | "
            f"restarts {restarts}"
        )
        if state:
            line += f" | {state}"
        if final:
            line += f" after {now - self._started:,.1f}s"
        if self.progress == "line":
            end = "\n" if final else ""
            print(f"\r{line}\x1b[K", end=end, file=self.out, flush=True)
        else:
            self._last_line = now
            print(line, file=self.out, flush=True)
