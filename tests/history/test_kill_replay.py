"""A late node killed with SIGKILL while it replays a RabbitMQ stream
(``history=stream``) resumes where its store's position says and still ends with
every fact handled exactly once, never before its predecessors.

The facts are all published first (shuffled, 30 % duplicates); then a fresh
consumer (fault_worker.py: SQLite store, transactional effect rows) replays the
stream and is killed KILLS times: from outside at a random instant, or by itself
inside a handler's transaction, right after a commit (before its acks) or
between two acks. Sizes: ``FACTBUS_REPLAY_KILL_FACTS`` (default 5,000) and
``FACTBUS_REPLAY_KILLS`` (default 6).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))

from fault_harness import Worker, start_run, transport_url

pytestmark = [pytest.mark.broker("amqp"), pytest.mark.timeout(600)]

FACTS = int(os.environ.get("FACTBUS_REPLAY_KILL_FACTS", "5000"))
KILLS = int(os.environ.get("FACTBUS_REPLAY_KILLS", "6"))


def test_kill9_during_stream_replay_ends_exactly_once() -> None:
    run = start_run("replay", "kill", FACTS)
    rng, dag, log = run.rng, run.dag, run.log
    url = transport_url("amqp", "history=stream")
    pub = run.publisher(url, stderr=log.name)
    assert pub.wait(timeout=300) == 0, log.read_text()[-2000:]

    current: Worker = run.consumer(url)
    kills = 0
    for _ in range(KILLS):
        if rng.random() < 0.5:
            point = rng.choice(("handler", "commit", "ack"))
            at = rng.randint(1, 8) if point == "commit" else rng.randint(1, FACTS // KILLS)
            current.kill9()
            current = run.consumer(url, die_at=f"{point}:{at}")
            # Else the replay ended before that point: killed from outside below.
            with contextlib.suppress(subprocess.TimeoutExpired):
                current.wait(timeout=20)
            if current.proc.returncode == -9:
                kills += 1
                current = run.consumer(url)
                continue
        else:
            current.wait_ready(60)
            time.sleep(rng.uniform(0.2, 1.5))
        if current.kill9():
            kills += 1
        current = run.consumer(url)
    seen, verdict = run.settle(current)  # its pause: a late duplicate would show then
    print(f"replay-kill: {kills} kills, {verdict}")
    assert seen >= len(dag)
    assert kills >= KILLS // 2
    assert verdict.perfect, verdict
