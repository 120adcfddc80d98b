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

import pytest
from fault_harness import (
    brokers,
    effects_count,
    require,
    scaled,
    start_run,
    transport_url,
    wait_for_effects,
)

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
    run = start_run("restart", name, FACTS)
    url, dag = transport_url(name, PATIENCE[name]), run.dag
    reader = run.consumer(url)
    reader.wait_ready(120)
    pub = run.publisher(url, pace=10.0 + 12.0 * RESTARTS)
    outages: list[float] = []
    for number in range(RESTARTS):
        # Let part of the stream through first, so that the restart hits it mid-way.
        target = len(dag) * (number + 1) // (RESTARTS + 2)
        wait_for_effects(run.store, target, timeout=120, alive=[reader])
        outages.append(round(brokers(command, broker), 1))
        require(reader.alive(), f"the consumer died with the broker: {run.log.read_text()[-3000:]}")
    require(pub.wait(timeout=600) == 0, "publisher failed: see publisher.log")
    seen, verdict = run.settle(reader)  # it also requires the consumer alive at the end
    run.report(
        "broker-restart",
        verdict,
        transport=name,
        broker=broker,
        command=command,
        restarts=len(outages),
        outage_seconds=outages,
    )
    require(seen >= len(dag), f"only {effects_count(run.store)} of {len(dag)} facts handled")
    assert verdict.perfect, verdict
