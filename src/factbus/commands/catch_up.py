"""Catch a node up from peers' sidecars: every fact they keep, through the node's handlers.

  factbus catch-up myapp.node:bus --from http://peer:8081 [--from http://other:8081]

imports myapp.node and takes its attribute "bus" (a factbus.Bus, or a function
returning one), as `factbus worker` does: the facts go through that bus's own
handlers, dedup and causal order, into its store. Run it while the node is
stopped (or instead of starting it with `catch_up` in its settings, which does
the same on start before consuming live). Each peer is read from the cursor the
node's store kept for it, page by page (GET /facts?after=&limit=), every hash
verified; a node killed meanwhile resumes where its last page committed.

Exit status: 0 when every peer was caught up from, 1 when one failed (the
others are still read; pages settled before the failure stay), 2 on a
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio

from factbus.bus import Bus
from factbus.catchup import PAGE_LIMIT, CatchUpError
from factbus.commands.worker import add_bus_arguments, load_bus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_bus_arguments(parser, "the node's bus")
    parser.add_argument(
        "--from",
        dest="peers",
        action="append",
        required=True,
        metavar="URL",
        help="a peer's sidecar, e.g. http://peer:8081 (repeat for several)",
    )
    parser.add_argument(
        "--limit", type=int, default=PAGE_LIMIT, help=f"facts per page (default {PAGE_LIMIT})"
    )


def run(args: argparse.Namespace) -> int:
    bus = load_bus(args.target, args.app_dir)
    return asyncio.run(_catch_up(bus, args.peers, args.limit))


async def _catch_up(bus: Bus, peers: list[str], limit: int) -> int:
    status = 0
    try:
        for peer in peers:
            try:
                report = await bus.catch_up(peer, limit=limit)
            except CatchUpError as error:
                print(f"{peer}: failed: {error}", flush=True)
                status = 1
                continue
            print(
                f"{report.peer}: {report.facts} facts in {report.pages} pages, "
                f"{report.handled} new, {report.rate:.0f} facts/s, cursor {report.cursor}",
                flush=True,
            )
    finally:
        await bus.aclose()
    return status
