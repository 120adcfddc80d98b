"""Subprocesses for the sidecar kill test.

``project``: a sidecar node through the Python API: a Bus on a SQLite store with
:class:`~factbus.sidecar.views.Views` attached (the shop tables of
``views_support.shop_config``). ``--die-at flush:N`` makes it ``kill -9`` itself
in the N-th step's before-commit hook, right after the view writes (so inside
the transaction); ``commit:N`` right after the N-th commit, before the acks.
Prints ``ready`` once subscribed and ``stats {...}`` every second.

``publish``: publishes the shop facts of ``--seeds`` shuffled with duplicates,
each in an envelope of its own without ancestors, paced over ``--pace`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from views_support import shop_config, shop_facts

from factbus import Bus, Fact
from factbus.dispatcher import current_transaction
from factbus.sidecar.views import Views
from factbus.testing.node_process import die, serve


def kill_fact_set(seeds: int) -> list[Fact]:
    """The facts of the kill test (deterministic), causal order, each once."""
    out: dict[object, Fact] = {}
    for seed in range(seeds):
        for fact in shop_facts(seed, orders=5, edits=4, cancels=3):
            out.setdefault(fact.ref, fact)
    return list(out.values())


async def project(args: argparse.Namespace) -> None:
    bus = Bus(args.transport, f"sqlite:///{args.store}", topic=args.topic, node=args.node)
    views = Views(shop_config(), store_url=f"sqlite:///{args.store}")
    views.attach(bus)
    point, _, at = (args.die_at or "").partition(":")
    count = {"flush": 0, "commit": 0}

    def crash_point(name: str) -> None:
        count[name] += 1
        if name == point and count[name] == int(at):
            die()

    if point:
        # Registered after the views' catch-all: runs after it for every fact, so
        # its hooks come after the views' own in each transaction.
        @bus.handler("*")
        def tripwire(fact: Fact) -> None:
            tx = current_transaction()
            if getattr(tripwire, "tx", None) is not tx:
                tripwire.tx = tx  # type: ignore[attr-defined]

                async def flushed() -> None:
                    crash_point("flush")

                tx.before_commit(flushed)
                tx.after_commit(lambda: crash_point("commit"))

    await views.open()
    await serve(bus, views.aclose)


async def publish(args: argparse.Namespace) -> None:
    facts = kill_fact_set(args.seeds)
    rng = random.Random(args.seeds)
    order = facts + [rng.choice(facts) for _ in range(len(facts) // 4)]
    rng.shuffle(order)
    async with Bus(args.transport, "memory://", topic=args.topic, node="pub", consume=False) as pub:
        print("ready", flush=True)
        started = time.monotonic()
        batches = range(0, len(order), 200)
        for number, start in enumerate(batches):
            await pub.publish(*order[start : start + 200], ancestors=False)
            ahead = started + args.pace * (number + 1) / len(batches) - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    print("published", len(order), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="sidecar_worker")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("project")
    p.add_argument("--transport", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--die-at")
    q = commands.add_parser("publish")
    q.add_argument("--transport", required=True)
    q.add_argument("--topic", required=True)
    q.add_argument("--seeds", type=int, required=True)
    q.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(project(args) if args.command == "project" else publish(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
