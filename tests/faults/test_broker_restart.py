"""Restart the broker in the middle of the stream; publisher and consumer recover by
themselves (the test never restarts them) and nothing is lost.

RabbitMQ is stopped and started (``scripts/brokers.sh restart rabbitmq``), over
the ``amqp://`` adapter and over ``kombu+amqp://``; Kafka is killed with SIGKILL
and started again on the same log directory (``scripts/brokers.sh kill9 kafka``).
The publisher (``publish`` blocks or retries while the broker is away; it must
not fail) and the consumer (SQLite store, transactional effects, as in
``test_kill_consumer.py``) are subprocesses. redis (``kombu+redis://``) is
stopped and started too: ``scripts/brokers.sh`` runs it with AOF persistence, and
what the consumer held unacked when its connection dropped comes back after the
visibility timeout (10 s here).
"""

from __future__ import annotations

import random
import time

import pytest
from fault_harness import (
    brokers,
    classify,
    consumer,
    effects_count,
    publisher,
    report,
    require,
    scaled,
    transport_url,
    unique,
    wait_for_effects,
    work_dir,
)
from fault_worker import scenario

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

FACTS = scaled(10_000, 2_000)
RESTARTS = scaled(2, 1)
# Publishing waits for the broker longer than a restart takes.
PATIENCE = {
    "amqp": "publish_timeout=120",
    "kafka": "publish_timeout=120",
    "kombu_amqp": "factbus_retry_timeout=120",
    "redis": "factbus_retry_timeout=120&transport.visibility_timeout=10",
}


@pytest.mark.parametrize(
    ("name", "command", "broker"),
    [
        ("amqp", "restart", "rabbitmq"),
        ("kombu_amqp", "restart", "rabbitmq"),
        ("kafka", "kill9", "kafka"),
        ("redis", "restart", "redis"),
    ],
)
def test_broker_restart_mid_stream(name: str, command: str, broker: str) -> None:
    tmp_path = work_dir(f"restart-{name}")
    url = transport_url(name, PATIENCE[name])
    rng = random.Random(f"restart-{name}-{time.time()}")
    seed = rng.randint(1, 10_000)
    dag, order = scenario(FACTS, seed, 0.3)
    topic, node = unique("restart"), unique("node")
    store = tmp_path / "node.db"
    log = tmp_path / "consumer.log"
    started = time.monotonic()
    reader = consumer(url, store, topic, node, log=log)
    reader.wait_ready(120)
    pace = 10.0 + 12.0 * RESTARTS
    pub = publisher(
        url,
        topic,
        count=FACTS,
        seed=seed,
        log=tmp_path / "published.log",
        pace=pace,
        stderr=tmp_path / "publisher.log",
    )
    outages: list[float] = []
    for number in range(RESTARTS):
        # Let part of the stream through first, so that the restart hits it mid-way.
        target = len(dag) * (number + 1) // (RESTARTS + 2)
        wait_for_effects(store, target, timeout=120, alive=[reader])
        outages.append(round(brokers(command, broker), 1))
        require(reader.alive(), f"the consumer died with the broker: {log.read_text()[-3000:]}")
    require(pub.wait(timeout=600) == 0, "publisher failed: see publisher.log")
    seen = wait_for_effects(store, len(dag), timeout=300, alive=[reader])
    time.sleep(2.0)
    require(reader.alive(), "the consumer died")
    reader.terminate()
    verdict = classify(store, dag)
    report(
        "broker-restart",
        transport=name,
        broker=broker,
        command=command,
        restarts=len(outages),
        outage_seconds=outages,
        facts=len(dag),
        messages=len(order),
        verdict=verdict,
        seconds=round(time.monotonic() - started, 1),
    )
    require(seen >= len(dag), f"only {effects_count(store)} of {len(dag)} facts handled")
    assert verdict.perfect, verdict
