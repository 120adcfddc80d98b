"""Profile the pipeline on one transport and print where the time goes, per layer.

    .venv/bin/python benchmarks/studies/profile_pipeline.py --transport memory:// --facts 50000
    .venv/bin/python benchmarks/studies/profile_pipeline.py \\
        --transport kafka://127.0.0.1:9092 --wall

Runs ``factbus bench`` (no baseline, no half-load phase) with the peak phase
sampled by pyinstrument on the event-loop thread, and prints the layer table
and the hottest functions as Markdown (see :mod:`factbus.bench.profile`); the
pyinstrument call tree goes to ``<out>/<transport>.txt``. ``--cprofile`` runs
again under cProfile on the event-loop thread's CPU time (call counts; heavy
overhead on small functions) and writes ``<out>/<transport>.cpu.prof``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from factbus.bench import BenchConfig, run_bench
from factbus.bench.profile import markdown
from factbus.bench.runner import session_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", default="")
    parser.add_argument("--store", default="")
    parser.add_argument("--facts", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--shape", default="independent")
    parser.add_argument("--publish-batch", type=int, default=100)
    parser.add_argument("--publisher-mode", default="auto")
    parser.add_argument("--out", default="benchmarks/profiles")
    parser.add_argument("--cprofile", action="store_true", help="also a cProfile CPU-time run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (args.transport.split("://")[0] or "memory").replace("+", "-")
    base = BenchConfig(
        transport=args.transport,
        store=args.store,
        facts=args.facts,
        warmup=args.warmup,
        shape=args.shape,  # type: ignore[arg-type]
        publish_batch=args.publish_batch,
        publisher_mode=args.publisher_mode,
        baseline=False,
        half_load=False,
    )
    text = out / f"{name}.txt"
    result = asyncio.run(run_bench(_with(base, str(text))))
    print(f"## {result.transport} ({result.publisher_mode} publishers, store {result.store})\n")
    print(
        f"{result.messages_per_s:,.0f} msgs/s end to end, "
        f"{result.cpu_us_per_msg:.1f} µs CPU/msg (whole process, all threads) while profiled\n"
    )
    print(markdown(session_path(str(text)), result.messages))
    if args.cprofile:
        prof = out / f"{name}.cpu.prof"
        asyncio.run(run_bench(_with(base, str(prof))))
        print(f"\ncProfile (event-loop thread CPU time): {prof}")


def _with(config: BenchConfig, profile: str) -> BenchConfig:
    from dataclasses import replace

    return replace(config, profile=profile)


if __name__ == "__main__":
    main()
