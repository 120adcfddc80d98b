"""Per-fact cost of each pipeline stage, measured alone (best of several repeats).

    .venv/bin/python benchmarks/studies/micro_costs.py [--facts 5000] [--shape independent]

Best-of-N CPU times (``time.process_time``) are far less sensitive to a busy
machine than throughput: they show what each layer costs when it gets the CPU.
Prints a Markdown table in µs per fact (see benchmarks/studies/PROFILE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import tempfile
from pathlib import Path

import orjson

from factbus.bench.cputime import best_cpu_us, best_cpu_us_async
from factbus.bench.workload import WorkloadSpec, build_workload
from factbus.bus import Bus
from factbus.canonical import canonical_bytes, freeze
from factbus.envelope import decode, encode
from factbus.fact import Fact, FactRef, _wire_predecessors
from factbus.store.base import StoreBatch
from factbus.store.sqlite import SqliteStore
from factbus.transport.base import Message
from factbus.transport.memory import MemoryTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=5000)
    parser.add_argument("--shape", default="independent")
    parser.add_argument("--payload", type=int, default=100)
    args = parser.parse_args()
    workload = build_workload(WorkloadSpec(args.facts, payload=args.payload, shape=args.shape))  # type: ignore[arg-type]
    bodies = workload.bodies
    facts = workload.order
    n = len(bodies)
    docs = [orjson.loads(b) for b in bodies]
    wires = [d["facts"][0] for d in docs]
    preds = [
        {
            role: [FactRef(v["type"], v["hash"]) for v in value]
            if isinstance(value, list)
            else FactRef(value["type"], value["hash"])
            for role, value in w["predecessors"].items()
        }
        for w in wires
    ]
    frozen = [freeze(w["fields"], path="fields") for w in wires]
    canon = [f.canonical for f in facts]
    rows: list[tuple[str, float]] = []
    rows.append(("orjson.loads(body)", best_cpu_us(lambda: [orjson.loads(b) for b in bodies], n)))
    rows.append(
        (
            "freeze(fields) (validate + immutable copy)",
            best_cpu_us(lambda: [freeze(w["fields"], path="fields") for w in wires], n),
        )
    )
    rows.append(
        (
            "canonical_bytes (floats as fragments, sorted dumps)",
            best_cpu_us(
                lambda: [
                    canonical_bytes(
                        f.value, _wire_predecessors(p), f.needs_python_writer, f.needs_float_layout
                    )
                    for f, p in zip(frozen, preds, strict=True)
                ],
                n,
            ),
        )
    )
    rows.append(
        (
            "SHA-512 + base64",
            best_cpu_us(
                lambda: [base64.b64encode(hashlib.sha512(c).digest()).decode() for c in canon], n
            ),
        )
    )
    rows.append(
        (
            "Fact(type, fields, preds) (freeze + canonical + hash + object)",
            best_cpu_us(
                lambda: [
                    Fact(w["type"], w["fields"], p) for w, p in zip(wires, preds, strict=True)
                ],
                n,
            ),
        )
    )
    rows.append(
        (
            "envelope.decode(body) (all of the above + checks)",
            best_cpu_us(lambda: [decode(b) for b in bodies], n),
        )
    )
    fresh = [decode(b)[0] for b in bodies]
    copies = iter([[decode(b)[0] for b in bodies] for _ in range(7)])
    rows.append(
        (
            "fact.wire_bytes() of a received fact (store form, not cached yet)",
            best_cpu_us(lambda: [f.wire_bytes() for f in next(copies)], n),
        )
    )
    rows.append(
        (
            "envelope.encode([fact]) (wire bytes cached)",
            best_cpu_us(lambda: [encode([f]) for f in facts], n),
        )
    )
    asyncio.run(_async_rows(rows, fresh, bodies))
    size = sum(map(len, bodies)) // n
    print(f"{n} facts, shape {args.shape}, payload {args.payload} B, envelope ~{size} B\n")
    print("| stage | µs per fact (best of 7, CPU time) |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")


async def _async_rows(
    rows: list[tuple[str, float]], facts: list[Fact], bodies: list[bytes]
) -> None:
    n = len(facts)
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1_000_000))

        async def record() -> None:
            store = SqliteStore(f"sqlite:///{Path(tmp) / f'r{next(counter)}.db'}")
            await store.open()
            for start in range(0, n, 512):
                async with store.transaction() as tx:
                    await tx.record(StoreBatch(handled=facts[start : start + 512]))
            await store.aclose()

        rows.append(
            (
                "SQLite: record handled, 512 per transaction (incl. BEGIN/COMMIT)",
                await best_cpu_us_async(record, n),
            )
        )
        store = SqliteStore(f"sqlite:///{Path(tmp) / 'states.db'}")
        await store.open()
        async with store.transaction() as tx:
            await tx.record(StoreBatch(handled=facts))
        refs = [f.ref for f in facts]

        async def states() -> None:
            for start in range(0, n, 512):
                await store.states(refs[start : start + 512])

        rows.append(
            ("SQLite: states() look-up, 512 refs per call", await best_cpu_us_async(states, n))
        )
        await store.aclose()

    async def memory_hop() -> None:
        transport = MemoryTransport(f"memory://micro-{next(counter)}")
        subscription = await transport.subscribe("t", "g")
        messages = [Message(b, "id", "id", {"x-factbus-producer": "p"}) for b in bodies]
        for start in range(0, n, 512):
            await transport.publish("t", messages[start : start + 512])
            for delivery in await subscription.next_batch(512):
                await delivery.ack()
        await transport.aclose()

    counter = iter(range(1_000_000))
    rows.append(
        (
            "memory transport: publish + next_batch + ack (512 a batch)",
            await best_cpu_us_async(memory_hop, n),
        )
    )

    async def publish() -> None:
        bus = Bus(
            f"memory://micro-pub-{next(counter)}", "memory://", topic="t", node="p", consume=False
        )
        await bus.start()
        for start in range(0, n, 100):
            await bus.publish(*facts[start : start + 100], ancestors=False)
        await bus.aclose()

    rows.append(
        (
            "Bus.publish(100 facts, ancestors=False), memory store",
            await best_cpu_us_async(publish, n),
        )
    )


if __name__ == "__main__":
    main()
