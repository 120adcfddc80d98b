"""Catch-up from a real peer sidecar (`factbus sidecar`, its ``GET /facts`` export) on
kombu+redis, a broker with no history: a node started after 10,000 facts were
published (shuffled, 30 % duplicates) converges to the peer's facts, each once,
in causal order, then goes on live. Size: ``FACTBUS_LATE_FACTS`` (default 10,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peer_support import peer_sidecar, wait_exported

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))

from fault_harness import Worker, classify, consumer, wait_for_effects
from fault_worker import scenario

from conftest import broker_url
from factbus import Bus
from factbus.catchup import position_key
from factbus.testing.brokers import unique
from factbus.testing.scenario import (
    CausalChecker,
    random_dag,
    shuffled_with_duplicates,
    state_digest,
)

pytestmark = [pytest.mark.broker("redis"), pytest.mark.timeout(600)]

FACTS = int(os.environ.get("FACTBUS_LATE_FACTS", "10000"))
TYPES = ("Scenario.Independent", "Scenario.Chains", "Scenario.FanIn")


async def test_late_node_converges_through_catch_up(tmp_path: Path) -> None:
    url = broker_url("redis")
    topic = unique("late")
    dag = random_dag(FACTS + 100, seed=29)
    before, after = dag[:FACTS], dag[FACTS:]
    checker = CausalChecker.of(dag)
    with peer_sidecar(url, tmp_path / "peer.db", topic, "peer", tmp_path / "peer.log") as peer:
        async with Bus(url, "memory://", topic=topic, node="pub", consume=False) as pub:
            order = shuffled_with_duplicates(before, duplicates=0.3, seed=29)
            for start in range(0, len(order), 500):
                await pub.publish(*order[start : start + 500], ancestors=False)
            peer_refs = await asyncio.to_thread(wait_exported, peer, FACTS, 300)
            assert len(peer_refs) == FACTS  # the peer was there from the start

            store = f"sqlite:///{tmp_path / 'late.db'}"
            late = Bus(url, store, topic=topic, node="late", catch_up=[peer])
            for fact_type in TYPES:
                late.handler(fact_type)(lambda fact: checker.record("late", fact))
            async with late:
                # Caught up during start, before consuming live.
                assert len(checker.done["late"]) == FACTS
                assert await late.store.position(position_key(peer)) is not None
                await pub.publish(*after, ancestors=False)  # then live facts arrive
                async with asyncio.timeout(120):
                    while not checker.complete("late"):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                await late.drain()
    report = checker.report(["late"])
    assert (report.lost, report.duplicated, report.out_of_order) == (0, 0, 0)
    caught_up = set(checker.handled["late"][:FACTS])
    assert state_digest(caught_up) == state_digest(set(peer_refs))
    assert state_digest(set(checker.handled["late"])) == state_digest({f.ref for f in dag})


def test_kill9_during_catch_up_ends_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late node (fault_worker.py consume: SQLite store, transactional effect rows)
    catching up from the peer is killed with SIGKILL ``FACTBUS_CATCHUP_KILLS`` times
    (default 5), over ``FACTBUS_CATCHUP_KILL_FACTS`` facts (default 3,000): from
    outside at a random instant of its start, or by itself inside a handler's
    transaction or right after a page's commit. Each restart resumes
    at the cursor its store kept; in the end every fact is handled once, in causal
    order."""
    kills_wanted = int(os.environ.get("FACTBUS_CATCHUP_KILLS", "5"))
    facts = int(os.environ.get("FACTBUS_CATCHUP_KILL_FACTS", "3000"))
    url = broker_url("redis")
    topic = unique("late")
    rng = random.Random(f"catchup-kill-{time.time()}")
    seed = rng.randint(1, 10_000)
    dag, order = scenario(facts, seed, 0.3)
    store, log = tmp_path / "late.db", tmp_path / "late.log"
    with peer_sidecar(url, tmp_path / "peer.db", topic, "peer", tmp_path / "peer.log") as peer:

        async def publish() -> None:
            async with Bus(url, "memory://", topic=topic, node="pub", consume=False) as pub:
                for start in range(0, len(order), 500):
                    await pub.publish(*order[start : start + 500], ancestors=False)

        asyncio.run(publish())
        assert len(wait_exported(peer, facts, 300)) == facts
        monkeypatch.setenv("FACTBUS_CATCH_UP", peer)  # the workers' Bus reads it
        current: Worker = consumer(url, store, topic, "late", log=log)
        kills = 0
        for _ in range(kills_wanted):
            if rng.random() < 0.5:
                point = rng.choice(("handler", "commit"))  # catch-up has no acks
                # Small enough to fall within what is left to catch up.
                share = max(20, facts // (2 * kills_wanted))
                at = rng.randint(1, 2) if point == "commit" else rng.randint(1, share)
                current.kill9()
                current = consumer(url, store, topic, "late", die_at=f"{point}:{at}", log=log)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    current.wait(timeout=20)  # else not reached: killed from outside below
                if current.proc.returncode == -9:
                    kills += 1
                    current = consumer(url, store, topic, "late", log=log)
                    continue
            else:
                time.sleep(rng.uniform(0.3, 2.5))  # catch-up runs inside start()
            if current.kill9():
                kills += 1
            current = consumer(url, store, topic, "late", log=log)
        seen = wait_for_effects(store, len(dag), timeout=300, alive=[current])
        time.sleep(1.0)
        current.terminate()
    verdict = classify(store, dag)
    print(f"catch-up kill: {kills} kills, {verdict}")
    assert seen >= len(dag)
    assert kills >= kills_wanted // 2
    assert verdict.perfect, verdict


def test_catch_up_command(tmp_path: Path) -> None:
    """`factbus catch-up MODULE:ATTR --from URL` pulls the peer's facts through the
    node's own handlers; run again, it only reads what is new (nothing here)."""
    url = broker_url("redis")
    topic = unique("late")
    dag = random_dag(300, seed=3)
    app = tmp_path / "lateapp.py"
    app.write_text(
        "from factbus import Bus\n"
        f"bus = Bus({url!r}, 'sqlite:///{tmp_path / 'cli.db'}', topic={topic!r}, node='cli')\n"
        "seen = open(" + repr(str(tmp_path / "seen.txt")) + ", 'a')\n"
        "for t in ('Scenario.Independent', 'Scenario.Chains', 'Scenario.FanIn'):\n"
        "    bus.handler(t)(lambda fact: seen.write(fact.hash + '\\n') or seen.flush())\n"
    )
    with peer_sidecar(url, tmp_path / "peer.db", topic, "peer", tmp_path / "peer.log") as peer:

        async def publish() -> None:
            async with Bus(url, "memory://", topic=topic, node="pub", consume=False) as pub:
                await pub.publish(*dag, ancestors=False)

        asyncio.run(publish())
        assert len(wait_exported(peer, len(dag), 120)) == len(dag)
        command = [sys.executable, "-m", "factbus", "catch-up", "lateapp:bus", "--from", peer]
        command += ["--app-dir", str(tmp_path), "--limit", "100"]
        first = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert f"{peer}: 300 facts in 3 pages, 300 new" in first.stdout
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert f"{peer}: 0 facts in 0 pages, 0 new" in again.stdout
    seen = (tmp_path / "seen.txt").read_text().split()
    assert sorted(seen) == sorted(f.hash for f in dag)
