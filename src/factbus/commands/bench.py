"""Measure end-to-end throughput and latency against the raw broker client, same run.

Facts are published, received, verified, deduplicated, causally ordered and
handled by a trivial handler on a Bus over --transport, with a store
(--store, default SQLite in a temporary directory). In the same run the raw
client (confluent-kafka, aio-pika with confirms, kombu, or an asyncio.Queue for
memory://) moves the same envelope bodies over the same broker, and every
throughput is also given as a ratio to it. Latency is publish -> handled per
fact, at peak and with publishing paced at half of the peak rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from factbus.bench import BenchConfig, run_bench
from factbus.bench.cleanup import BenchCleanupError
from factbus.bench.report import plot, table
from factbus.bench.workload import SHAPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport", default="", help="transport URL (default: a fresh memory:// namespace)"
    )
    parser.add_argument(
        "--store",
        default="",
        help="store URL of the consuming bus "
        "(default sqlite:///<tmpdir>/bench.db; memory:// works)",
    )
    parser.add_argument("--facts", type=int, default=20_000, help="facts per phase (default 20000)")
    parser.add_argument(
        "--payload", type=int, default=100, help="extra bytes of text per fact (default 100)"
    )
    parser.add_argument(
        "--publishers", type=int, default=1, help="concurrent publishers (default 1)"
    )
    parser.add_argument(
        "--publisher-mode",
        choices=("auto", "task", "process"),
        default="auto",
        help="publishers as tasks of this process or as processes "
        "(default auto: processes, except for memory://)",
    )
    parser.add_argument("--shape", choices=SHAPES, default="independent", help="fact graph shape")
    parser.add_argument(
        "--duplicates",
        type=float,
        default=0.0,
        help="extra copies published, as a share of the facts (default 0)",
    )
    parser.add_argument(
        "--reorder", action="store_true", help="shuffle the publish order (facts get parked)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=512, help="deliveries per pipeline step (default 512)"
    )
    parser.add_argument(
        "--publish-batch", type=int, default=100, help="facts per publish call (default 100)"
    )
    parser.add_argument(
        "--publish-inflight",
        type=int,
        default=1,
        metavar="K",
        help="publish calls each publisher keeps in flight at the peak (and warm-up, "
        "drain backlog); default 1: each call awaits its confirms before the next. "
        "K > 1 needs --shape independent or --reorder",
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=1,
        help="facts per envelope the publishers pack, Bus(pack=N) (default 1: one per message)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2_000, help="facts handled before measuring (default 2000)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the raw-client baseline (no ratios)"
    )
    parser.add_argument(
        "--no-half-load", action="store_true", help="skip the run at half of peak load"
    )
    parser.add_argument(
        "--no-drain", action="store_true", help="skip draining a backlog with a new bus"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="freeze the collector's start-up objects as `factbus worker` does "
        "(before the raw client's phase and once the bus has started); "
        "default: the collector of an embedding application, untouched",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the topics, queues, exchanges, consumer groups and keys the run made on "
        "the broker (their names are printed), to look at them; by default they are removed "
        "when the run ends, also after a failure or Ctrl-C",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--plot", metavar="PATH.png", help="write a throughput/latency plot")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="profile the peak phase: PATH.prof (cProfile), PATH.html or PATH.txt (pyinstrument)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--sidecar",
        action="store_true",
        help="instead: facts/s projected into the sidecar's views next to the plain "
        "handler pipeline, SQLite (and PostgreSQL with --postgres); see factbus.bench.sidecar",
    )
    parser.add_argument(
        "--postgres",
        default="",
        metavar="URL",
        help="with --sidecar: also measure on this PostgreSQL database (a fresh schema per run)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="with --sidecar: runs per cell (median; default 3)"
    )


def config_from(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        transport=args.transport,
        store=args.store,
        facts=args.facts,
        payload=args.payload,
        publishers=args.publishers,
        publisher_mode=args.publisher_mode,
        shape=args.shape,
        duplicates=args.duplicates,
        reorder=args.reorder,
        batch_size=args.batch_size,
        publish_batch=args.publish_batch,
        publish_inflight=args.publish_inflight,
        pack=args.pack,
        warmup=args.warmup,
        seed=args.seed,
        baseline=not args.no_baseline,
        half_load=not args.no_half_load,
        drain=not args.no_drain,
        timeout=args.timeout,
        profile=args.profile or "",
        gc_freeze=args.gc_freeze,
        keep=args.keep,
    )


class _ProgressObserver:
    """Shows each phase as a progress bar."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self._progress = progress
        self._console = console
        self._tasks: dict[str, TaskID] = {}

    def phase(self, name: str, total: int) -> None:
        self._tasks[name] = self._progress.add_task(name, total=total)

    def advance(self, name: str, done: int) -> None:
        task = self._tasks.get(name)
        if task is not None:
            self._progress.update(task, completed=done)

    def note(self, text: str) -> None:
        self._console.print(text)


def run_sidecar(args: argparse.Namespace) -> int:
    from rich.table import Table

    from factbus.bench.sidecar import run_sidecar_bench

    cells = asyncio.run(
        run_sidecar_bench(
            facts=args.facts,
            payload=args.payload,
            repeat=args.repeat,
            postgres=args.postgres,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    )
    out = Console() if sys.stdout.isatty() else Console(width=240)
    grid = Table(title=f"sidecar views vs plain handler pipeline ({args.facts} facts, drain)")
    for column in (
        "store",
        "plain facts/s",
        "sidecar facts/s",
        "ratio",
        "CPU µs/fact plain → sidecar (ratio)",
        "runs facts/s (plain | sidecar)",
    ):
        grid.add_column(column)
    for cell in cells:
        data = cell.as_json()
        grid.add_row(
            cell.store,
            f"{data['plain_median']:,.0f}",
            f"{data['sidecar_median']:,.0f}",
            f"{cell.ratio:.2f}",
            f"{statistics.median(cell.plain_cpu):.0f} → {statistics.median(cell.sidecar_cpu):.0f} "
            f"({cell.cpu_ratio:.2f})",
            " ".join(f"{r:,.0f}" for r in cell.plain)
            + " | "
            + " ".join(f"{r:,.0f}" for r in cell.sidecar),
        )
    out.print(grid)
    if args.json:
        Path(args.json).write_text(
            json.dumps([c.as_json() for c in cells], indent=2) + "\n", encoding="utf-8"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sidecar:
        return run_sidecar(args)
    config = config_from(args)
    console = Console(stderr=True)  # progress and notes; the table goes to stdout
    observer: Any = None
    progress = Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    )
    with progress:
        if not args.quiet:
            observer = _ProgressObserver(progress, console)
        status = 0
        try:
            result = asyncio.run(run_bench(config, observer))
        except TimeoutError:
            console.print(
                f"[red]factbus bench: a phase took longer than --timeout {config.timeout:g}s[/]"
            )
            return 1
        except KeyboardInterrupt:
            # asyncio.run cancelled the run first: what it made was removed (or what
            # is left was logged) before this.
            console.print("[red]factbus bench: interrupted[/]")
            return 130
        except BenchCleanupError as error:
            console.print(f"factbus bench: {error}", style="red", markup=False)
            result, status = error.result, 2
    # Not a terminal: wide enough for every column rather than rich's default 80.
    out = Console() if sys.stdout.isatty() else Console(width=240)
    out.print(table([result]))
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot([result], args.plot)
    return status
