"""Bridge the bus and an unmodified jinaga-server: push facts, pull feeds.

  factbus jinaga-bridge --config bridge.toml

The TOML file has the bus settings in [factbus] and the bridge's in [jinaga]:
url (the server's replicator, e.g. http://127.0.0.1:8091/jinaga), node and
store (the bridge's own bus node name and store; default "<node>-jinaga-bridge"
and its SQLite file), push (default true: every fact on the bus is saved to the
server), poll_interval, batch_size, timeout, and one [[jinaga.feed]] table per
feed to pull (root = {type, fields} or {type, hash}, successor, role).
See docs/jinaga.md.

Runs until SIGTERM or SIGINT, then finishes the page or batch in flight (one
still running after [jinaga] timeout seconds is abandoned and redone on the next
start), closes the bus and exits 0. Exit status 2 on a
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from factbus.urls import redact

if TYPE_CHECKING:
    from factbus.jinaga.bridge import JinagaBridge


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", required=True, help="TOML file with [factbus] and [jinaga]")


def run(args: argparse.Namespace) -> int:
    # Imported here: the bridge needs httpx (factbus[jinaga]); the other
    # commands work without it.
    from factbus.jinaga.bridge import JinagaBridge, load_bridge_config

    config = load_bridge_config(args.config)
    asyncio.run(_serve(JinagaBridge(config)))
    return 0


async def _serve(bridge: JinagaBridge) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with bridge:
        print(f"factbus jinaga-bridge: {redact(bridge.config.url)} ready", flush=True)
        await stop.wait()
