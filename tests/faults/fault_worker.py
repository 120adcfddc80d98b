"""Subprocesses for the fault tests: a consumer that proves what it handled, and a
publisher that proves what the broker confirmed.

``consume``: a Bus node with a SQLite store and one **transactional** handler. For
each fact, inside the store transaction that marks it handled, the handler
checks that every predecessor's effect row exists (a missing one is recorded in
``violations``) and writes the fact's own row into ``effects`` (no uniqueness:
a second row for a fact is a duplicate the checker counts). Everything commits
together or not at all, so a ``kill -9`` at any instant leaves the effects
exactly as the store's handled marks say. ``--die-at POINT:N`` makes the process
``kill -9`` itself at the N-th occurrence of ``handler`` (inside the transaction,
after writing the effect), ``commit`` (after a commit, before any ack) or ``ack``
(between two acks of one step). It prints ``ready`` once subscribed and
``stats {...}`` every second.

``publish``: publishes the shuffled, duplicated DAG in batches (each fact in an
envelope of its own, no ancestors) and, after each ``publish`` returns, appends
the batch's position and refs to ``--log`` and fsyncs it. On restart it resumes
after the last logged batch, so a fact in the log was published exactly once,
by a call that returned: it must arrive. ``--pace`` spreads the batches over
that many seconds.

"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from factbus import Bus, Fact
from factbus.store.sqlite import SqliteStore
from factbus.testing.node_process import die, serve
from factbus.testing.scenario import random_dag, shuffled_with_duplicates
from factbus.transport import (
    Delivery,
    DeliveryBatch,
    LogReader,
    Subscription,
    Transport,
    delivery_position,
    take_batch,
)

SCENARIO_TYPES = ("Scenario.Independent", "Scenario.Chains", "Scenario.FanIn")

EFFECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL, type TEXT NOT NULL, pid INTEGER NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS effects_ref ON effects (hash, type);
CREATE TABLE IF NOT EXISTS violations (
    hash TEXT NOT NULL, type TEXT NOT NULL, missing_hash TEXT NOT NULL, missing_type TEXT NOT NULL
);
"""


def prepare_effects(path: Path) -> None:
    """Create the effects tables in the node's SQLite file (before the store opens it)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(EFFECTS_SCHEMA)
    db.close()


def scenario(count: int, seed: int, duplicates: float) -> tuple[list[Fact], list[Fact]]:
    """The DAG and its hostile publishing order (deterministic for a seed)."""
    dag = random_dag(count, seed=seed)
    return dag, shuffled_with_duplicates(dag, duplicates=duplicates, seed=seed)


class Tripwire:
    """Counts occurrences of one crash point and crashes at the N-th (``kill -9``
    by default; the in-process tests raise instead)."""

    def __init__(self, spec: str | None, crash: Callable[[], None] = die) -> None:
        self.point, self.at = "", 0
        if spec:
            point, _, at = spec.partition(":")
            self.point, self.at = point, int(at)
        self.seen = 0
        self.crash = crash

    def hit(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.at:
                self.crash()


class TrippingDelivery:
    """A delivery whose ack may be the last thing this process does."""

    __slots__ = ("_inner", "_wire")

    def __init__(self, inner: Delivery, wire: Tripwire) -> None:
        self._inner = inner
        self._wire = wire

    @property
    def body(self) -> bytes:
        return self._inner.body

    @property
    def headers(self) -> Mapping[str, str]:
        return self._inner.headers

    @property
    def redelivered(self) -> bool:
        return self._inner.redelivered

    @property
    def position(self) -> int | None:
        """The inner delivery's log position (RabbitMQ streams), if it has one."""
        return delivery_position(self._inner)

    async def ack(self) -> None:
        self._wire.hit("ack")
        await self._inner.ack()

    async def nack(self, requeue: bool = True) -> None:
        await self._inner.nack(requeue)


class TrippingBatch(DeliveryBatch):
    """A subscription's own batch (``take_batch``: the bus's path, Kafka's
    ``KafkaBatch``) with the ``ack`` crash point; the records it hands out are
    tripping deliveries."""

    __slots__ = ("_inner", "_wire")

    def __init__(self, inner: DeliveryBatch, wire: Tripwire) -> None:
        super().__init__(inner.bodies)
        self._inner = inner
        self._wire = wire

    def delivery(self, index: int) -> Delivery:
        return TrippingDelivery(self._inner.delivery(index), self._wire)

    def deliveries(self) -> list[Delivery]:
        return [TrippingDelivery(d, self._wire) for d in self._inner.deliveries()]

    @property
    def position(self) -> int | None:
        return self._inner.position

    def extend(self, more: DeliveryBatch) -> None:
        self._inner.extend(more._inner if isinstance(more, TrippingBatch) else more)
        self.bodies = self._inner.bodies

    async def ack(self) -> None:
        # One hit per record, as when each was acked alone, so that a crash
        # point counted in acks is reached as often; it falls before the batch's ack.
        for _ in range(len(self)):
            self._wire.hit("ack")
        await self._inner.ack()

    async def nack(self, requeue: bool = True) -> None:
        await self._inner.nack(requeue)


class TrippingSubscription:
    def __init__(self, inner: Subscription, wire: Tripwire) -> None:
        self._inner = inner
        self._wire = wire

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._inner.__aiter__()

    async def next_batch(self, max_messages: int, timeout: float | None = None) -> list[Any]:
        batch = await self._inner.next_batch(max_messages, timeout)
        return [TrippingDelivery(d, self._wire) for d in batch]

    async def take_batch(self, max_messages: int, timeout: float | None = None) -> DeliveryBatch:
        return TrippingBatch(await take_batch(self._inner, max_messages, timeout), self._wire)

    async def aclose(self) -> None:
        await self._inner.aclose()


def install_tripwire(bus: Bus, wire: Tripwire) -> None:
    """Wrap the bus's store transactions and subscription with the crash points."""
    if not wire.point:
        return
    store = bus.store
    inner_transaction = store.transaction

    @asynccontextmanager
    async def transaction() -> AsyncIterator[Any]:
        async with inner_transaction() as tx:
            yield tx
        wire.hit("commit")

    store.transaction = transaction  # type: ignore[method-assign]
    transport: Transport = bus.transport
    inner_subscribe = transport.subscribe

    async def subscribe(topic: str, group: str) -> Subscription:
        return TrippingSubscription(await inner_subscribe(topic, group), wire)

    transport.subscribe = subscribe  # type: ignore[method-assign]
    if isinstance(transport, LogReader):
        inner_subscribe_log = transport.subscribe_log

        async def subscribe_log(topic: str, node: str, position: int | None) -> Subscription:
            return TrippingSubscription(await inner_subscribe_log(topic, node, position), wire)

        transport.subscribe_log = subscribe_log  # type: ignore[method-assign]


def register_effects(bus: Bus, types: Sequence[str], wire: Tripwire) -> None:
    pid = os.getpid()

    def effect(fact: Fact, db: sqlite3.Connection) -> None:
        for pred in fact.predecessor_refs():
            row = db.execute(
                "SELECT 1 FROM effects WHERE hash = ? AND type = ? LIMIT 1", (pred.hash, pred.type)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO violations VALUES (?, ?, ?, ?)",
                    (fact.hash, fact.type, pred.hash, pred.type),
                )
        db.execute(
            "INSERT INTO effects (hash, type, pid, at) VALUES (?, ?, ?, ?)",
            (fact.hash, fact.type, pid, time.time()),
        )
        wire.hit("handler")

    for fact_type in types:
        bus.handler(fact_type, transactional=True)(effect)


async def consume(args: argparse.Namespace) -> None:
    store_path = Path(args.store)
    prepare_effects(store_path)
    bus = Bus(
        args.transport,
        SqliteStore(f"sqlite:///{store_path}"),
        topic=args.topic,
        node=args.node,
        batch_size=args.batch_size,
        retry_attempts=1,
    )
    wire = Tripwire(args.die_at)
    register_effects(bus, args.types.split(","), wire)
    install_tripwire(bus, wire)
    await serve(bus)


def logged_position(log_path: Path) -> int:
    """Where the previous run stopped: the end of the last logged batch."""
    done = 0
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            if line.startswith("batch "):
                done = int(line.split()[2])  # "batch <start> <end>"
    return done


async def publish(args: argparse.Namespace) -> None:
    _, order = scenario(args.count, args.seed, args.duplicates)
    log_path = Path(args.log)
    done = logged_position(log_path)
    async with Bus(
        args.transport, "memory://", topic=args.topic, node=args.node, consume=False
    ) as publisher:
        print("ready", done, flush=True)
        started = time.monotonic()
        batches = max(1, (len(order) - done + args.batch - 1) // args.batch)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for number, start in enumerate(range(done, len(order), args.batch)):
                chunk = order[start : start + args.batch]
                refs = await publisher.publish(*chunk, ancestors=False)
                lines = "".join(f"ref {r.type} {r.hash}\n" for r in refs)
                os.write(fd, f"{lines}batch {start} {start + len(chunk)}\n".encode())
                os.fsync(fd)
                if args.pace:
                    ahead = started + args.pace * (number + 1) / batches - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            os.close(fd)
    print("published", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fault_worker")
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("consume")
    c.add_argument("--transport", required=True)
    c.add_argument("--store", required=True, help="SQLite file")
    c.add_argument("--topic", required=True)
    c.add_argument("--node", required=True)
    c.add_argument("--batch-size", type=int, default=512)
    c.add_argument("--die-at", default=None, help="handler:N, commit:N or ack:N")
    c.add_argument("--types", default=",".join(SCENARIO_TYPES), help="fact types to handle")
    p = commands.add_parser("publish")
    p.add_argument("--transport", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--node", default="fault-publisher")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duplicates", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--log", required=True)
    p.add_argument("--pace", type=float, default=0.0, help="seconds to spread the stream over")
    args = parser.parse_args(argv)
    runner = consume if args.command == "consume" else publish
    asyncio.run(runner(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
