"""Break the network between the clients and the broker with the fault proxy while a
stream flows; publisher and consumer recover by themselves and nothing is lost.

Publisher and consumer (subprocesses, as in ``test_kill_consumer.py``) reach the
broker only through a :class:`~factbus.testing.faultproxy.FaultProxy` in the test
process. Faults, in order, each followed by a healthy spell: every connection
reset (twice); a silent drop (nothing forwarded, sockets kept open) until a
client gives up on its dead connection and opens a new one, which shows how
long a silent drop takes to be noticed (the heartbeat options in
``fault_harness.FAST_DETECTION``); 300 ms of added latency each way; every
connection closed after 64 KiB; the broker refusing connections for 4 s.

Kafka: the proxy runs in Kafka mode, which rewrites the broker address the
clients learn from Metadata and FindCoordinator responses to its own, so every
connection (bootstrap, partition leader, group coordinator) goes through it.
"""

from __future__ import annotations

import time

import pytest
from fault_harness import (
    effects_count,
    require,
    scaled,
    start_run,
    transport_url,
    wait_for_effects,
)

from factbus.testing.faultproxy import FaultProxy, through, upstream_of

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

FACTS = scaled(10_000, 2_000)
DROP_LIMIT = 20.0
"""Seconds a silent drop may last before someone must have noticed it."""


@pytest.mark.parametrize("name", ["amqp", "kafka", "kombu_amqp"])
def test_connection_faults_nothing_lost(name: str) -> None:
    run = start_run("proxy", name, FACTS)
    direct, dag, store, log = transport_url(name), run.dag, run.store, run.log
    faults: dict[str, object] = {}
    with FaultProxy(upstream_of(direct), kafka=name == "kafka").running() as proxy:
        url = through(direct, proxy)
        reader = run.consumer(url)
        reader.wait_ready(120)
        pub = run.publisher(url, pace=40.0)

        def progress(seconds: float) -> None:
            """A healthy spell: the consumer must make progress in it (unless done)."""
            before = effects_count(store)
            time.sleep(seconds)
            require(reader.alive(), f"consumer died: {log.read_text()[-3000:]}")
            if before < len(dag) and pub.alive():
                wait_for_effects(store, before + 1, timeout=60, alive=[reader])

        progress(3)
        resets = 0
        for _ in range(2):
            resets += proxy.reset_connections()
            progress(3)
        faults["connections_reset"] = resets

        accepted = proxy.stats.accepted
        proxy.drop()
        dropped_at = time.monotonic()
        while proxy.stats.accepted == accepted and time.monotonic() - dropped_at < DROP_LIMIT:
            time.sleep(0.1)
        noticed = time.monotonic() - dropped_at
        time.sleep(1.0)
        proxy.passthrough()
        faults["drop_noticed_after_s"] = round(noticed, 1)
        require(noticed < DROP_LIMIT, f"nobody noticed a silent drop within {DROP_LIMIT}s")
        progress(4)

        proxy.set_latency(0.3)
        progress(5)
        proxy.set_latency(0)

        closed = proxy.stats.closed_after
        proxy.close_after(64 * 1024)
        time.sleep(5)
        proxy.close_after(None)
        faults["closed_after_64KiB"] = proxy.stats.closed_after - closed
        progress(3)

        proxy.refuse()
        time.sleep(4)
        proxy.passthrough()
        progress(2)

        require(pub.wait(timeout=300) == 0, "publisher failed: see publisher.log")
        seen, verdict = run.settle(reader)
        faults["proxy"] = {
            "accepted": proxy.stats.accepted,
            "reset": proxy.stats.reset,
            "kafka_addresses_rewritten": proxy.stats.rewritten,
        }
    run.report("connection-faults", verdict, transport=name, faults=faults)
    if name == "kafka":
        require(proxy.stats.rewritten > 0, "Kafka clients were never told the proxy's address")
    require(seen >= len(dag), f"only {seen} of {len(dag)} facts handled")
    assert verdict.perfect, verdict
