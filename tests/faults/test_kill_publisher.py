"""Kill the publisher (``kill -9``) while it publishes; every fact whose ``publish``
returned must arrive.

The publisher (``fault_worker.py publish``) logs, after each ``publish`` call
returns, the refs of that batch and fsyncs the log; a restarted publisher
resumes after the last logged batch, so a logged fact was published exactly once
and by a call that returned. After each kill the test waits until every logged
fact is in the consumer's store (handled or parked), before any republishing.
The kill lands right after a random number of batches was logged, so the next
batch is in flight: it then arrived partly, fully (confirmed, not logged yet) or
not at all; the test counts each case. There is no memory
variant: the memory broker lives in the publisher's process and dies with it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from fault_harness import (
    Worker,
    logged_refs,
    require,
    scaled,
    start_run,
    transport_url,
)
from fault_worker import logged_position

from factbus.fact import FactRef

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

FACTS = scaled(10_000, 1_000)
KILLS = scaled(10, 3)
BATCH = 100


def arrived(store: Path, refs: set[FactRef]) -> set[FactRef]:
    """Those of ``refs`` the consumer's store knows (handled or parked)."""
    if not store.exists():
        return set()
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT hash, type FROM factbus_facts").fetchall()
    except sqlite3.OperationalError:
        return set()
    finally:
        db.close()
    known = {FactRef(t, h) for h, t in rows}
    return refs & known


def after_batches(log: Path, batches: int, pub: Worker, timeout: float = 60.0) -> float:
    """Return as soon as the publisher has logged ``batches`` more batches (each
    batch is one append to the log) or has exited, with the time one batch took."""
    size = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + timeout
    last, took = time.monotonic(), 0.0
    while batches > 0 and pub.alive() and time.monotonic() < deadline:
        now = log.stat().st_size if log.exists() else 0
        if now != size:
            size = now
            batches -= 1
            took, last = time.monotonic() - last, time.monotonic()
        else:
            time.sleep(0.0005)
    return took


def wait_arrived(store: Path, refs: set[FactRef], timeout: float) -> set[FactRef]:
    """Wait until every ref arrived; return those still missing."""
    deadline = time.monotonic() + timeout
    missing = set(refs)
    while missing and time.monotonic() < deadline:
        missing -= arrived(store, missing)
        if missing:
            time.sleep(0.2)
    return missing


@pytest.mark.parametrize("name", ["amqp", "kafka", "redis"])
def test_kill9_publisher_every_confirmed_fact_arrives(name: str) -> None:
    run = start_run("pubkill", name, FACTS)
    url, rng, store, order = transport_url(name), run.rng, run.store, run.order
    log = run.dir / "published.log"
    reader = run.consumer(url)
    reader.wait_ready(120)

    kills = 0
    outcomes = {"partly": 0, "fully-unlogged": 0, "not-at-all": 0}
    lost_confirmed: set[FactRef] = set()
    while kills < KILLS:
        pub = run.publisher(url, batch=BATCH, stderr="pub.log")
        pub.wait_ready(120)
        # Kill right after the k-th batch was logged: the next batch is then in
        # flight (the publisher starts it at once), whatever the broker's speed.
        left = (len(order) - logged_position(log)) // BATCH
        took = after_batches(log, rng.randint(2, max(2, min(8, left - 1))), pub)
        time.sleep(rng.uniform(0, took))  # somewhere inside the next batch
        if not pub.kill9():
            require(pub.proc.returncode == 0, "publisher failed")
            break  # it finished first: nothing left to kill
        kills += 1
        confirmed = set(logged_refs(log))
        lost_confirmed |= wait_arrived(store, confirmed, timeout=60)
        position = logged_position(log)
        before = {f.ref for f in order[:position]}
        in_flight = {f.ref for f in order[position : position + BATCH]} - before
        if in_flight:
            time.sleep(0.5)
            got = len(arrived(store, in_flight))
            key = (
                "not-at-all"
                if got == 0
                else "fully-unlogged"
                if got == len(in_flight)
                else "partly"
            )
            outcomes[key] += 1

    final = run.publisher(url, batch=BATCH, stderr="pub.log")
    require(final.wait(timeout=300) == 0, "the last publisher run failed")
    _, verdict = run.settle(reader, pause=1.0)
    run.report(
        "kill9-publisher",
        verdict,
        transport=name,
        kills=kills,
        kill_outcomes=outcomes,
        confirmed_lost=len(lost_confirmed),
    )
    assert not lost_confirmed, f"{len(lost_confirmed)} facts whose publish returned never arrived"
    assert kills >= min(KILLS, 3)
    assert verdict.perfect, verdict
