"""List the facts a node's store holds back because predecessors have not arrived.

Each parked fact is shown with the predecessors it still misses, and for each
missing one whether the node has it parked too (it waits itself) or has never
received it. The facts never received are the root causes: a publisher that
did not ship them, a dead-lettered predecessor (see ``factbus dlq``), or a
topic this node does not read. Oldest first.

The store comes from ``--store`` or the usual settings (``FACTBUS_STORE``, else
``sqlite:///.factbus/<node>.db``). A SQLite store that does not exist is an
error (it is not created). Exit status: 0 (also when nothing waits), 2 error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import structlog
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from factbus.config import Settings
from factbus.errors import ConfigError, FactbusError
from factbus.fact import FactRef
from factbus.logging import configure_logging
from factbus.store import FactState, ParkedFact, Store, open_store
from factbus.store.sqlite import sqlite_path
from factbus.urls import redact

log = structlog.get_logger("factbus.commands.parked")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the paragraphs
    parser.add_argument("--store", default=None, help="store URL (default: settings)")
    parser.add_argument("--node", default=None, help="node name, for the default store URL")
    parser.add_argument("--limit", type=int, default=100, help="at most this many facts (100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(store=args.store, node=args.node)
    if not structlog.is_configured():
        configure_logging(settings.log_level)
    if args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    url = settings.store_url
    if url.startswith("sqlite:"):
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).exists():
            raise ConfigError(f"no store at {path} (check --store or FACTBUS_STORE)")
    return asyncio.run(_parked(open_store(url), url, args))


async def _parked(store: Store, url: str, args: argparse.Namespace) -> int:
    try:
        await store.open()
    except FactbusError:
        raise
    except Exception as error:
        log.debug("opening the store failed", store=redact(url), exc_info=True)
        raise ConfigError(f"cannot open store {redact(url)}: {error}") from error
    try:
        counts = await store.counts()
        parked = await store.parked(args.limit)
        missing = {m for p in parked for m in p.missing}
        states = await store.states(missing)
    finally:
        await store.aclose()
    rows = [_row(i, p, states) for i, p in enumerate(parked, 1)]
    if args.json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    console = Console(highlight=False, soft_wrap=True)
    waiting = counts["parked"]
    console.print(
        f"{waiting} fact{'s' if waiting != 1 else ''} waiting for predecessors in "
        f"{escape(redact(url))} ({counts['handled']} handled)"
    )
    if not rows:
        return 0
    table = Table()
    for column in ("#", "fact", "waiting for"):
        table.add_column(column, overflow="fold")
    for row in rows:
        needs = ", ".join(
            f"{escape(m['ref'])} ({'parked' if m['parked'] else 'not received'})"
            for m in row["missing"]
        )
        if not needs:
            needs = "nothing any more (handed on when the node next starts)"
        table.add_row(str(row["number"]), escape(row["ref"]), needs)
    console.print(table)
    roots = Counter(m["ref"] for row in rows for m in row["missing"] if not m["parked"])
    if roots:
        console.print("never received (root causes), with how many listed facts wait on each:")
        for ref, n in roots.most_common(20):
            console.print(f"  {escape(ref)}: {n}")
    if len(rows) < waiting:
        console.print(f"(first {len(rows)} of {waiting}; use --limit to see more)")
    return 0


def _row(number: int, parked: ParkedFact, states: dict[FactRef, FactState]) -> dict[str, Any]:
    fact = parked.fact
    return {
        "number": number,
        "ref": str(fact.ref),
        "type": fact.type,
        "hash": fact.hash,
        "missing": [
            {
                "ref": str(m),
                "type": m.type,
                "hash": m.hash,
                "parked": states.get(m) is FactState.PARKED,
            }
            for m in sorted(parked.missing)
        ],
    }
