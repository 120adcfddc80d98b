"""CPU µs per fact of each receive stage, next to the hand-written floor, in one run.

    .venv/bin/python benchmarks/stages.py [--facts 10000] [--shape independent] [--write]

Stages (a step is 512 envelopes of one fact, 100 B of payload):

- **floor**: the hand-written loop of :mod:`factbus.bench.floor` (the whole
  receive work a user would write, no store): the yardstick.
- **decode+verify**: :func:`factbus.envelope.decode_each` of each step's
  bodies, as the pipeline calls it (every hash recomputed), on the path in
  use: the native helper (``factbus_native``) unless it is not built or
  ``FACTBUS_NATIVE=0``; the row's name says which. When the helper is in use,
  a second row times the Python path on the same bodies in the same run (the
  plain path, else the full path: what ``FACTBUS_NATIVE=0`` runs).
- **dedup/order**: :class:`factbus.causal.CausalBuffer` deciding a step
  (duplicates, ready, parked) from the store states.
- **dispatch**: what the pipeline's step does per ready fact with a plain
  sync handler (``Pipeline``'s step transaction, pipeline.py): inside
  ``Dispatcher.bound(tx)``, the type's handlers looked up once per type per
  step (``Dispatcher.plain_handlers``) and called directly, no coroutine per
  fact. Keep it in step with that loop. A second row times the coroutine
  path, :meth:`factbus.dispatcher.Dispatcher.dispatch`, which the pipeline
  takes only for middleware, async, transactional or threaded handlers.
- **store write**: one SQLite transaction per step recording the handled facts
  (``tx.record``), BEGIN/COMMIT included.

Best of 7 CPU times (``time.process_time``): a regression shows in the stage
that has it, whatever else the machine runs. ``--write`` replaces the
"## Stages" section of benchmarks/RESULTS.md (run_matrix.py keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from factbus import envelope
from factbus.bench.cputime import REPEATS, best_cpu_us, best_cpu_us_async
from factbus.bench.floor import floor_pass
from factbus.bench.report import replace_section
from factbus.bench.workload import Shape, WorkloadSpec, build_workload
from factbus.causal import CausalBuffer
from factbus.dispatcher import Dispatcher
from factbus.envelope import CodecLimits, decode, decode_each
from factbus.fact import Fact, FactRef
from factbus.store.base import FactState, StoreBatch
from factbus.store.memory import MemoryStore
from factbus.store.sqlite import SqliteStore

HERE = Path(__file__).resolve().parent
STEP = 512


def steps(facts: list[Fact]) -> list[list[Fact]]:
    return [facts[i : i + STEP] for i in range(0, len(facts), STEP)]


async def measure(facts_count: int, shape: Shape) -> list[tuple[str, float]]:
    bodies = build_workload(WorkloadSpec(facts_count, shape=shape, seed=11)).bodies
    n = len(bodies)
    facts = [f for body in bodies for f in decode(body)]
    limits = CodecLimits()
    body_steps = [bodies[i : i + STEP] for i in range(0, n, STEP)]
    path = "native helper" if envelope.NATIVE else "Python"
    rows = [
        ("floor (hand-written loop, no store)", best_cpu_us(lambda: floor_pass(bodies), n)),
        (
            f"decode+verify ({path}, decode_each per step)",
            best_cpu_us(lambda: [decode_each(step, limits) for step in body_steps], n),
        ),
    ]
    if envelope.NATIVE:
        rows.append(
            (
                "decode+verify (Python path, as FACTBUS_NATIVE=0)",
                best_cpu_us(lambda: [_python_decode(b, limits) for b in bodies], n),
            )
        )

    def order() -> None:
        known: dict[FactRef, FactState] = {}
        for chunk in steps(facts):
            buffer = CausalBuffer(known)
            buffer.add(chunk)
            for fact in buffer.ready:
                buffer.admit(fact)
            buffer.parked()
            for fact in buffer.ready:
                known[fact.ref] = FactState.HANDLED

    rows.append(("dedup/order decision (CausalBuffer)", best_cpu_us(order, n)))

    dispatcher = Dispatcher()
    handled: list[Fact] = []
    for fact_type in {f.type for f in facts}:
        dispatcher.register(fact_type, handled.append)
    memory = MemoryStore()
    await memory.open()

    async def dispatch_plain() -> None:
        # The pipeline's loop for plain sync handlers, step by step.
        for chunk in steps(facts):
            async with memory.transaction() as tx, _bound(dispatcher, tx):
                plain: dict[str, list[Any] | None] = {}
                for fact in chunk:
                    fact_type = fact.type
                    try:
                        funcs = plain[fact_type]
                    except KeyError:
                        funcs = plain[fact_type] = dispatcher.plain_handlers(fact_type)
                    if funcs is None:
                        await dispatcher.dispatch(fact, tx)
                    else:
                        for func in funcs:
                            func(fact)

    async def dispatch_coroutine() -> None:
        for chunk in steps(facts):
            async with memory.transaction() as tx:
                for fact in chunk:
                    await dispatcher.dispatch(fact, tx)

    if any(dispatcher.plain_handlers(t) is None for t in {f.type for f in facts}):
        raise RuntimeError("stages.py: the handlers are not plain: the dispatch row would lie")
    rows.append(
        (
            "dispatch (one sync handler, plain call as the pipeline)",
            await best_cpu_us_async(dispatch_plain, n),
        )
    )
    handled.clear()
    rows.append(
        (
            "dispatch via Dispatcher.dispatch (coroutine path)",
            await best_cpu_us_async(dispatch_coroutine, n),
        )
    )
    await memory.aclose()

    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1_000_000))

        async def record() -> None:
            store = SqliteStore(f"sqlite:///{Path(tmp) / f's{next(counter)}.db'}")
            await store.open()
            for chunk in steps(facts):
                async with store.transaction() as tx:
                    await tx.record(StoreBatch(handled=chunk))
            await store.aclose()

        rows.append(
            ("store write (SQLite, one transaction per step)", await best_cpu_us_async(record, n))
        )
    return rows


def _python_decode(body: bytes, limits: CodecLimits) -> list[Fact]:
    """What :func:`decode` does without the native helper."""
    facts = envelope._decode_plain(body, limits.max_bytes, limits.max_depth)
    return facts if facts is not None else envelope._decode_full(body, limits)


@contextlib.asynccontextmanager
async def _bound(dispatcher: Dispatcher, tx: Any) -> AsyncIterator[None]:
    with dispatcher.bound(tx):
        yield


def markdown(rows: list[tuple[str, float]], facts: int, shape: str) -> str:
    floor = rows[0][1]
    lines = [
        "## Stages",
        "",
        f"Written by `benchmarks/stages.py --facts {facts} --shape {shape} --write` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: CPU µs per fact of each "
        f"receive stage alone (best of {REPEATS}, steps of {STEP}), and each as a multiple "
        "of the hand-written floor measured in the same run.",
        "",
        "| stage | CPU µs/fact | × floor |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {us:.2f} | {us / floor:.2f} |" for name, us in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=10_000)
    parser.add_argument("--shape", default="independent")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.facts, args.shape))
    section = markdown(rows, args.facts, args.shape)
    print(section)
    if args.write:
        replace_section(HERE / "RESULTS.md", "## Stages", section)


if __name__ == "__main__":
    main()
