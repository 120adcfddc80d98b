"""Run the sidecar: project facts into tables in the app's database, serve its HTTP API.

`factbus sidecar --config sidecar.toml` runs until SIGTERM or SIGINT, then stops
gracefully: the HTTP server stops accepting, the outbox and the consumer finish
the step in progress, everything closes. Settings in [factbus] may be overridden
by FACTBUS_* environment variables (e.g. FACTBUS_TRANSPORT, FACTBUS_STORE).

`factbus sidecar rebuild --config sidecar.toml [TABLE]` rebuilds the views (or one
table) from the facts the sidecar keeps, into fresh tables that replace the old
ones atomically; a running sidecar keeps serving the old ones meanwhile.

See docs/sidecar.md for the TOML keys and the HTTP API.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from factbus.errors import ConfigError
from factbus.gc_freeze import freeze_after_start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="the sidecar's TOML file (required)"
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="override [sidecar] listen (port 0: any free port, printed on start)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    rebuild = actions.add_parser(
        "rebuild", help="rebuild the views (or one table) from the kept facts"
    )
    rebuild.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE")
    rebuild.add_argument("table", nargs="?", default=None, metavar="TABLE")


def run(args: argparse.Namespace) -> int:
    if not args.config:
        raise ConfigError("--config FILE is required (the sidecar's TOML file)")
    if args.action != "rebuild":
        import factbus.sidecar.server  # noqa: F401  (MissingDriver: pip install 'factbus[sidecar]')
    from factbus.sidecar.config import load_config

    config = load_config(args.config)
    if args.action == "rebuild":
        return asyncio.run(_rebuild(config, args.table))
    return asyncio.run(_serve(config, args.listen))


async def _serve(config: object, listen: str | None) -> int:
    from factbus.sidecar.config import SidecarConfig
    from factbus.sidecar.service import Sidecar

    assert isinstance(config, SidecarConfig)
    sidecar = Sidecar(config, listen=listen)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sidecar.stop)
    try:
        try:
            await sidecar.start()
        except OSError as error:  # the listen address is taken or cannot be resolved
            print(f"factbus sidecar: {error}", file=sys.stderr, flush=True)
            return 1
        freeze_after_start()  # full collections no longer walk the start-up's objects
        print(
            f"factbus sidecar: listening on {sidecar.url} "
            f"(node {sidecar.settings.node_name}, topic {sidecar.settings.topic})",
            flush=True,
        )
        await sidecar.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    print("factbus sidecar: stopped", flush=True)
    return 0


async def _rebuild(config: object, table: str | None) -> int:
    from factbus.sidecar.config import SidecarConfig
    from factbus.sidecar.rebuild import rebuild

    assert isinstance(config, SidecarConfig)
    store = config.settings().store_url
    result = await rebuild(config, [table] if table else None, store_url=store)
    rebuilt = ", ".join(f"{name} ({rows} rows)" for name, rows in result.rows.items())
    print(f"factbus sidecar rebuild: replayed {result.facts} facts into {rebuilt}", flush=True)
    return 0
