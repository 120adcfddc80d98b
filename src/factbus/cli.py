"""``factbus`` (also ``python -m factbus``): the command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from factbus.errors import FactbusError
from factbus.version import __version__

# Command name -> module in factbus.commands (see that package's docstring).
COMMANDS = {
    "demo": "demo",
    "bench": "bench",
    "dlq": "dlq",
    "parked": "parked",
    "worker": "worker",
    "catch-up": "catch_up",
    "jinaga-bridge": "jinaga_bridge",
    "sidecar": "sidecar",
    "top": "top",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="factbus",
        description=(
            "Share immutable, content-addressed facts over any broker: deduplicated, "
            "handled once each, never before their predecessors."
        ),
        epilog="Settings also come from FACTBUS_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"factbus {__version__}")
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default), error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        # A missing module is a broken install: fail loudly, never drop a command.
        module = importlib.import_module(f"factbus.commands.{module_name}")
        doc = (module.__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(name, help=doc, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level:
        from factbus.logging import configure_logging

        configure_logging(args.log_level)
    try:
        status: int = args.run(args)
    except FactbusError as error:
        print(f"factbus {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
