"""Kill the consumer at random points while a shuffled, duplicated DAG flows; restart
it each time; nothing may be lost, duplicated or handled before its predecessors.

Over each real broker the consumer is a subprocess (``fault_worker.py consume``:
SQLite store, transactional handler writing one effect row per fact in the same
transaction, checking its predecessors' rows) and is killed with SIGKILL: at a
random instant after it started (sometimes before it is even subscribed), or by
itself at the N-th handler call (inside the transaction), the N-th commit
(before any ack) or the N-th ack (between two acks of one step). The memory
transport cannot span processes, so its variant crashes the consumer inside one
process: the consumer task is cancelled at a random instant or dies at the same
three points, the bus is abandoned without ``aclose`` (the memory "broker"
takes back its unacknowledged messages, as a real broker does when a
connection dies) and a new bus opens the same SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time

import pytest
from fault_harness import (
    Worker,
    classify,
    effects_count,
    require,
    scaled,
    start_run,
    tail,
    transport_url,
)
from fault_worker import (
    SCENARIO_TYPES,
    Tripwire,
    install_tripwire,
    prepare_effects,
    register_effects,
)

from factbus import Bus
from factbus.store.sqlite import SqliteStore

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

FACTS = scaled(20_000, 1_000)
KILLS = scaled(20, 5)
POINTS = ("handler", "commit", "ack")
SIZES = {"redis_prefixed": (scaled(2_000, 1_000), 6, 15.0)}
"""(facts, kills, seconds the publisher spreads the stream over) where not FACTS,
KILLS and KILLS * 1.2 s: kombu+redis under a ``global_keyprefix`` runs the adapter's
same take and restore as plain redis (which gets the full size), so a short run
checks that the prefix reaches every key (20-40 s). Its stream lasts about as long
as its kills, so that a consumer told to die at its N-th handler call or ack still
has facts left to reach it (else it is killed from outside after 25 s)."""

# Kafka: static group membership, so that a restarted consumer takes its partitions
# back at once instead of waiting for the killed member's session to time out.
# redis (kombu): what a killed consumer had not acked comes back after the visibility
# timeout (300 s by default in the adapter), restored by the next consumer; its unacked
# bookkeeping under keys of its own, so that this short timeout never restores (and
# duplicates) messages that consumers of other tests on the same redis still hold.
RESTART_OPTIONS = {
    "kafka": "consumer.group.instance.id={node}",
    "redis": "transport.visibility_timeout=10&transport.unacked_key=factbus.{node}.unacked"
    "&transport.unacked_index_key=factbus.{node}.unacked_index"
    "&transport.unacked_mutex_key=factbus.{node}.unacked_mutex",
}
RESTART_OPTIONS["redis_prefixed"] = RESTART_OPTIONS["redis"] + "&transport.global_keyprefix={node}:"
BROKER = {"redis_prefixed": "redis"}
"""Variant -> the test broker it runs on (else its own name)."""


def random_point(
    rng: random.Random, point: str | None = None, facts: int = FACTS, kills: int = KILLS
) -> str:
    point = point or rng.choice(POINTS)
    # Commits happen once per step (up to 512 deliveries); handler calls and acks once
    # per fact: about facts / kills of them between two kills.
    per_fact = max(20, facts // kills)
    return f"{point}:{rng.randint(1, 20) if point == 'commit' else rng.randint(1, per_fact)}"


# -- real brokers: subprocess, kill -9 ---------------------------------------------


@pytest.mark.parametrize("name", ["amqp", "kafka", "redis", "redis_prefixed"])
def test_kill9_consumer_nothing_lost(name: str) -> None:
    facts, kill_count, pace = SIZES.get(name, (FACTS, KILLS, KILLS * 1.2))
    run = start_run("kill", name, facts)
    rng, dag = run.rng, run.dag
    options = RESTART_OPTIONS.get(name, "").format(node=run.node)
    url = transport_url(BROKER.get(name, name), options)

    first = run.consumer(url)
    first.wait_ready(120)
    # Spread the stream over roughly the time the kills take, so most happen mid-stream.
    pub = run.publisher(url, pace=pace)
    kills = self_kills = early_kills = 0
    current: Worker = first
    for _ in range(kill_count):
        roll = rng.random()
        if roll < 0.35:  # the worker kills itself at a chosen point
            current.kill9()
            point = random_point(rng, facts=facts, kills=kill_count)
            current = run.consumer(url, die_at=point)
            with contextlib.suppress(subprocess.TimeoutExpired):
                current.wait(timeout=25)  # else the point was not reached: kill it from outside
            if current.proc.returncode == -9:
                self_kills += 1
                kills += 1
                current = run.consumer(url)
                continue
        elif roll < 0.5:  # somewhere in start-up: connecting, recovering, subscribing
            time.sleep(rng.uniform(0.0, 1.5))
            early_kills += 1
        else:
            current.wait_ready(120)
            time.sleep(rng.uniform(0.05, 1.2))
        require(
            current.alive(),
            f"consumer exited by itself (rc {current.proc.returncode}): {tail(run.log)}",
        )
        assert current.kill9()
        kills += 1
        current = run.consumer(url)

    killed_at = time.monotonic()
    require(pub.wait(timeout=600) == 0, f"publisher failed: {tail(run.dir / 'publisher.log')}")
    current.wait_ready(120)
    seen, verdict = run.settle(current)  # its pause: late duplicates would show up then
    run.report(
        "kill9-consumer",
        verdict,
        transport=name,
        kills=kills,
        self_kills=self_kills,
        startup_kills=early_kills,
        kill_phase_seconds=round(killed_at - run.started, 1),
    )
    require(seen >= len(dag), f"only {seen} of {len(dag)} facts handled: {tail(run.log)}")
    require(kills >= kill_count, f"only {kills} kills")
    assert verdict.perfect, verdict


# -- memory: in one process --------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing in factbus catches it."""


def crash() -> None:
    raise Crash


async def test_memory_consumer_crashes_nothing_lost() -> None:
    run = start_run("crash", "memory", FACTS)
    url, rng, topic, store = transport_url("memory"), run.rng, run.topic, run.store
    dag, order = run.dag, run.order
    prepare_effects(store)
    crashes = max(KILLS, 20)

    def node(spec: str | None) -> Bus:
        bus = Bus(
            url, SqliteStore(f"sqlite:///{store}"), topic=topic, node="crashy", retry_attempts=1
        )
        wire = Tripwire(spec, crash)
        register_effects(bus, SCENARIO_TYPES, wire)
        install_tripwire(bus, wire)
        return bus

    async def publish(pace: float) -> None:
        async with Bus(url, "memory://", topic=topic, node="pub", consume=False) as pub:
            chunks = range(0, len(order), 100)
            for start in chunks:
                await pub.publish(*order[start : start + 100], ancestors=False)
                await asyncio.sleep(pace / len(chunks))

    bus = node(None)
    await bus.start()
    publishing = asyncio.create_task(publish(pace=crashes * 0.25))
    modes = {"cancel": 0, "handler": 0, "commit": 0, "ack": 0}
    for _ in range(crashes):
        mode = rng.choice(list(modes))
        if mode != "cancel":
            # Restart with a tripwire set; it crashes the consumer at that point.
            await abandon(bus)
            bus = node(random_point(rng, mode))
            await bus.start()
        consumer_task = bus.consumer
        assert consumer_task is not None
        if mode == "cancel":
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            consumer_task.cancel()
        else:
            done, _ = await asyncio.wait([consumer_task], timeout=5)
            if not done:
                consumer_task.cancel()  # point not reached: crash from outside instead
                mode = "cancel"
        modes[mode] += 1
        await abandon(bus)
        bus = node(None)
        await bus.start()
    await publishing
    deadline = time.monotonic() + 120
    while effects_count(store) < len(dag) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await bus.drain(timeout=60)
    await bus.aclose()
    verdict = classify(store, dag)
    run.report(
        "crash-consumer-in-process",
        verdict,
        transport="memory",
        kills=sum(modes.values()),
        modes=modes,
    )
    assert sum(modes.values()) >= 20
    assert verdict.perfect, verdict


async def abandon(bus: Bus) -> None:
    """The consumer is dead: stop its task, let the "broker" take back what it had not
    acknowledged, release the SQLite file. No ``aclose``: nothing is flushed."""
    task = bus.consumer
    if task is not None:
        if not task.done():
            task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            assert isinstance(task.exception(), Crash), task.exception()
    await bus.transport.aclose()
    await bus.store.aclose()
