"""A quick memory:// pipeline run: a smoke test of the whole bench, in seconds.

    .venv/bin/python benchmarks/quick_memory.py [--facts 20000] [--store memory://]

Publishes ``--facts`` facts on a fresh ``memory://`` namespace to one bus
(SQLite store in a temporary directory unless ``--store``), next to the bare
``asyncio.Queue`` baseline, and prints the table. No brokers needed.
"""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console

from factbus.bench import BenchConfig, run_bench
from factbus.bench.report import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--store", default="")
    parser.add_argument("--shape", default="independent")
    parser.add_argument("--duplicates", type=float, default=0.0)
    parser.add_argument("--reorder", action="store_true")
    args = parser.parse_args()
    config = BenchConfig(
        store=args.store,
        facts=args.facts,
        warmup=min(2_000, args.facts // 10),
        shape=args.shape,
        duplicates=args.duplicates,
        reorder=args.reorder,
    )
    result = asyncio.run(run_bench(config))
    Console(width=200).print(table([result], title="factbus bench (memory://, quick)"))


if __name__ == "__main__":
    main()
