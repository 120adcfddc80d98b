"""The receive path against the hand-written floor, in CPU time (issue 15 item 2).

    .venv/bin/python benchmarks/studies/receive_path.py [--facts 20000] [--rounds 5]
        [--shape independent] [--no-gc]

In one process, on the same envelope bodies (one fact each, 100 B payload):

- **floor**: :func:`factbus.bench.floor.floor_pass` (the loop a user would
  write by hand: ``orjson.loads``, one canonical ``orjson.dumps``, SHA-512,
  base64, a set, a predecessor check, a handler call);
- **decode**: :func:`factbus.envelope.decode_each` of every body (what a
  pipeline step runs: every hash recomputed, every value rule kept);
- **drain**: a :class:`~factbus.Bus` on ``memory://`` with the memory store
  draining the same bodies as a backlog published before it starts, one sync
  handler reading ``fact.fields`` (what ``factbus bench --transport memory://
  --store memory://`` drains), from start to the last fact handled.

Each figure is the best of ``--rounds`` CPU times (``time.process_time``) in µs
per fact: on a shared machine, far steadier than the bench's wall-clock
``floor_ratio`` (same definition: floor rate over drain rate, here
``floor µs / drain µs``). ``rest`` is what the drain spends beyond decoding
(causal buffer, dispatch, store, acks, the consume loop). ``--no-gc`` runs with
the garbage collector off, to show what collections cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from typing import get_args

from factbus import Bus, Fact
from factbus.bench.cputime import best_cpu_us
from factbus.bench.floor import floor_pass
from factbus.bench.workload import Shape, WorkloadSpec, build_workload
from factbus.envelope import decode_each
from factbus.transport.base import Message


async def drain_cpu(bodies: list[bytes], types: set[str], rounds: int) -> float:
    """Best CPU µs per fact of a new bus draining ``bodies`` (memory transport and store)."""
    return min([await _drain_once(bodies, types) for _ in range(rounds)]) / len(bodies) * 1e6


async def _drain_once(bodies: list[bytes], types: set[str]) -> float:
    bus = Bus(f"memory://receive-{uuid.uuid4().hex}", "memory://", topic="t", node="n")
    handled = 0
    done = asyncio.Event()

    def handler(fact: Fact) -> None:
        nonlocal handled
        fact.fields  # noqa: B018 - a handler reads its fact, as the bench's does
        handled += 1
        if handled == len(bodies):
            done.set()

    for fact_type in types:
        bus.handler(fact_type)(handler)
    await bus.start()
    await bus.transport.publish("t", [Message(body, str(i)) for i, body in enumerate(bodies)])
    start = time.process_time()
    await done.wait()
    spent = time.process_time() - start
    await bus.aclose()
    return spent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", choices=get_args(Shape), default="independent")
    parser.add_argument("--no-gc", action="store_true", help="garbage collector off")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    workload = build_workload(WorkloadSpec(args.facts, shape=args.shape, seed=7))
    bodies = workload.bodies
    n = len(bodies)
    floor = best_cpu_us(lambda: floor_pass(bodies), n, args.rounds)
    decode = best_cpu_us(lambda: decode_each(bodies), n, args.rounds)
    drain = await drain_cpu(bodies, {fact.type for fact in workload.order}, args.rounds)
    print(
        f"CPU µs per fact ({n} facts, {args.shape}, best of {args.rounds}"
        f"{', gc off' if args.no_gc else ''}): floor {floor:.2f} | decode {decode:.2f} "
        f"({decode / floor:.2f}x) | drain {drain:.2f} (rest {drain - decode:.2f}) | "
        f"floor/drain {floor / drain:.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
